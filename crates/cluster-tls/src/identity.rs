//! A node's TLS identity, replaceable while it runs (certificate renewal), and the revocation list
//! its listener checks (certificates of removed nodes).
//!
//! ```text
//!  Identity (cert chain + key) ──resolver──> node_server_config, node_client_config
//!  Revocations (fingerprints, removed node names) <── the replicated state, as it applies
//!  node_server_config: client certificate optional (a joining node has none: only its join
//!  request is served), checked against the CA, then against Revocations
//! ```

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls::client::ResolvesClientCert;
use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig, SignatureScheme,
};

use crate::{cert_info, load, provider, TlsError, TlsFiles};

/// This node's certificate (with the CA behind it, so that a joining node can check the CA's
/// fingerprint) and key, as TLS presents them; [`Identity::reload`] replaces them in place.
#[derive(Debug)]
pub struct Identity {
    current: RwLock<Arc<CertifiedKey>>,
}

fn certified(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let loaded = load(files)?;
    let mut chain = loaded.chain;
    let ca = crate::read_certs(&files.ca)?;
    for ca in ca {
        if !chain.contains(&ca) {
            chain.push(ca);
        }
    }
    let key = CertifiedKey::from_der(chain, loaded.key, &provider()).map_err(|err| TlsError::Invalid {
        path: files.cert.clone(),
        what: format!("certificate and key do not form a usable pair: {err}"),
    })?;
    Ok(Arc::new(key))
}

impl Identity {
    /// Loads the certificate and key of `files`.
    pub fn load(files: &TlsFiles) -> Result<Arc<Identity>, TlsError> {
        Ok(Arc::new(Identity { current: RwLock::new(certified(files)?) }))
    }

    /// Presents the certificate and key of `files` from the next handshake on.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        *self.current.write().expect("identity lock") = certified(files)?;
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current.read().expect("identity lock").clone()
    }
}

impl ResolvesServerCert for Identity {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for Identity {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Certificates the cluster refuses: by fingerprint (those it issued to a node since removed, or
/// revoked one by one), and by the name of a removed node (certificates issued by hand, whose
/// fingerprint the cluster never saw).
#[derive(Debug, Default)]
pub struct Revocations {
    current: RwLock<(BTreeSet<String>, BTreeSet<String>)>,
}

impl Revocations {
    /// Replaces the list: `fingerprints` and the common names of `names` are refused.
    pub fn set(&self, fingerprints: BTreeSet<String>, names: BTreeSet<String>) {
        *self.current.write().expect("revocations lock") = (fingerprints, names);
    }

    /// Why the client certificate `der` is refused, if it is.
    pub fn refusal(&self, der: &[u8]) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let info = cert_info(der).ok()?;
        self.refuses(&info.fingerprint, info.common_name.as_deref())
    }

    fn is_empty(&self) -> bool {
        let current = self.current.read().expect("revocations lock");
        current.0.is_empty() && current.1.is_empty()
    }

    /// Why a certificate with this fingerprint and common name is refused, if it is (checked again
    /// on every request of a connection opened before the revocation).
    pub fn refuses(&self, fingerprint: &str, common_name: Option<&str>) -> Option<String> {
        let current = self.current.read().expect("revocations lock");
        if current.0.contains(fingerprint) {
            return Some(format!("certificate {fingerprint} was revoked"));
        }
        match common_name {
            Some(name) if current.1.contains(name) => {
                Some(format!("certificate of `{name}` refused: that node was removed from the cluster"))
            }
            _ => None,
        }
    }
}

/// The server side of a node: presents `identity`, accepts clients with a certificate of the
/// cluster CA that is not revoked, and also clients with none (a joining node: the daemon then
/// serves its join request only).
pub fn node_server_config(
    files: &TlsFiles,
    identity: Arc<Identity>,
    revocations: Arc<Revocations>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let loaded = load(files)?;
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(loaded.roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|err| TlsError::Config(format!("client verifier for {}: {err}", files.ca.display())))?;
    let verifier = Arc::new(RevokingVerifier { inner, revocations });
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Config(err.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    Ok(Arc::new(config))
}

/// The client side of a node (towards its peers): verifies them against the CA and presents
/// `identity`.
pub fn node_client_config(files: &TlsFiles, identity: Arc<Identity>) -> Result<Arc<ClientConfig>, TlsError> {
    let loaded = load(files)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Config(err.to_string()))?
        .with_root_certificates(loaded.roots)
        .with_client_cert_resolver(identity);
    Ok(Arc::new(config))
}

/// The CA's verifier, then the revocation list.
#[derive(Debug)]
struct RevokingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revocations: Arc<Revocations>,
}

impl ClientCertVerifier for RevokingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        match self.revocations.refusal(end_entity) {
            Some(why) => Err(Error::General(why)),
            None => Ok(verified),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<tokio_rustls::rustls::client::danger::HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<tokio_rustls::rustls::client::danger::HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
