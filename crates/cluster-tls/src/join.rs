//! Certificates for nodes that join with a token: the request a new node makes (its own key, a
//! CSR), the certificate the cluster CA signs for exactly the name and address the token is
//! redeemed for, and the TLS configuration the new node uses before it has any certificate: it
//! trusts the server only if the server's chain holds the CA whose fingerprint the token carries.
//!
//! ```text
//!  new node: key + CSR(name, ip) ──TLS (server checked against the token's CA fingerprint)──> member
//!  member with the CA key: CSR checked (signature, name, ip) ──sign──> certificate (1 year)
//! ```

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{ca_params, fingerprint, provider, read_certs, read_text, TlsError};

/// How long a certificate issued to a joining node is valid; nodes renew theirs well before.
pub const NODE_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// What a new node sends to be certified: its CSR. Its key stays with it.
#[derive(Debug, Clone)]
pub struct NodeRequest {
    /// The new private key (PEM), to be written with mode 0600 by the caller.
    pub key_pem: String,
    /// A CSR for CN = the node name, SANs = that name (DNS) and the node's IP.
    pub csr_pem: String,
}

/// Makes a new key and a CSR for node `name` dialled at `ip`.
pub fn node_request(name: &str, ip: IpAddr) -> Result<NodeRequest, TlsError> {
    let generate = |source| TlsError::Generate { name: name.to_owned(), source };
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(generate)?;
    params.subject_alt_names.push(SanType::IpAddress(ip));
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, name);
    params.distinguished_name = subject;
    let csr = params.serialize_request(&key).map_err(generate)?;
    Ok(NodeRequest { key_pem: key.serialize_pem(), csr_pem: csr.pem().map_err(generate)? })
}

/// A certificate the CA signed: its PEM and what it says.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub info: crate::CertInfo,
}

/// Why a certificate request was refused; the message names what was wrong.
fn refused(what: String) -> TlsError {
    TlsError::Refused(what)
}

/// Signs the CSR of node `name` at `ip` with the CA in `ca_cert`/`ca_key`, valid from a minute
/// before `now_unix` for `lifetime`. The CSR must be correctly self-signed and ask for exactly
/// `name` (its common name and a DNS name) and `ip`, nothing else; the certificate says only that,
/// whatever else the CSR asked for (no CA rights, server and client authentication only).
pub fn sign_node_request(
    ca_cert: &Path,
    ca_key: &Path,
    csr_pem: &str,
    name: &str,
    ip: IpAddr,
    lifetime: Duration,
    now_unix: i64,
) -> Result<Issued, TlsError> {
    let request = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|err| refused(format!("the certificate request of node `{name}` is not a valid CSR: {err}")))?;
    let asked_name = request.params.distinguished_name.get(&DnType::CommonName).and_then(|value| match value {
        rcgen::DnValue::Utf8String(text) => Some(text.clone()),
        rcgen::DnValue::PrintableString(text) => Some(text.as_str().to_owned()),
        rcgen::DnValue::Ia5String(text) => Some(text.as_str().to_owned()),
        _ => None,
    });
    if asked_name.as_deref() != Some(name) {
        return Err(refused(format!(
            "the certificate request is for common name {asked_name:?}, not for node `{name}`"
        )));
    }
    for san in &request.params.subject_alt_names {
        let allowed = match san {
            SanType::DnsName(dns) => dns.as_str() == name,
            SanType::IpAddress(asked) => *asked == ip,
            _ => false,
        };
        if !allowed {
            return Err(refused(format!(
                "the certificate request of node `{name}` asks for {san:?}: only the name `{name}` and the address \
                 {ip} are certified"
            )));
        }
    }
    let ca_key_pem = read_text(ca_key)?;
    let key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|err| TlsError::Invalid { path: ca_key.to_owned(), what: format!("not a private key: {err}") })?;
    let ca_der = read_certs(ca_cert)?.into_iter().next().expect("read_certs returns at least one");
    let issuer = Issuer::new(ca_params(), key);
    // The CA key must belong to the CA certificate the nodes trust.
    let ca_check = ca_params().self_signed(
        &KeyPair::from_pem(&ca_key_pem)
            .map_err(|err| TlsError::Invalid { path: ca_key.to_owned(), what: format!("not a private key: {err}") })?,
    );
    let generate = |source| TlsError::Generate { name: name.to_owned(), source };
    let ca_check = ca_check.map_err(generate)?;
    if crate::cert_info(ca_check.der()).map(|info| info.public_key_sha256)
        != crate::cert_info(&ca_der).map(|info| info.public_key_sha256)
    {
        return Err(TlsError::Invalid {
            path: ca_key.to_owned(),
            what: format!("this key is not the key of the CA certificate {}", ca_cert.display()),
        });
    }
    let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(generate)?;
    params.subject_alt_names.push(SanType::IpAddress(ip));
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, name);
    params.distinguished_name = subject;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let start = time::OffsetDateTime::from_unix_timestamp(now_unix - 60)
        .map_err(|err| refused(format!("invalid time {now_unix}: {err}")))?;
    params.not_before = start;
    params.not_after = start + time::Duration::seconds(lifetime.as_secs() as i64 + 60);
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
        .map_err(|_| refused("no randomness for a serial number".to_owned()))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let cert = params.signed_by(&request.public_key, &issuer).map_err(generate)?;
    let info = crate::cert_info(cert.der()).map_err(TlsError::Refused)?;
    Ok(Issued { cert_pem: cert.pem(), info })
}

/// The client configuration of `clusterctl join`: no client certificate, and the server is trusted
/// only if its chain holds a CA certificate whose SHA-256 fingerprint is `ca_fingerprint` and its
/// own certificate is valid under that CA for the name dialled.
pub fn join_client_config(ca_fingerprint: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(FingerprintVerifier { fingerprint: ca_fingerprint.to_ascii_lowercase() });
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Config(err.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Trusts the CA of the server's chain whose fingerprint is the token's, then verifies as usual.
#[derive(Debug)]
struct FingerprintVerifier {
    fingerprint: String,
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        let Some(ca) = intermediates.iter().find(|cert| fingerprint(cert) == self.fingerprint) else {
            return Err(tokio_rustls::rustls::Error::General(format!(
                "the server does not present the cluster CA of the token (fingerprint {}): wrong server, or a forged \
                 token",
                self.fingerprint
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|err| tokio_rustls::rustls::Error::General(err.to_string()))?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|err| tokio_rustls::rustls::Error::General(err.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// What a join token carries: the cluster CA's fingerprint and a single-use secret. Written as
/// one line, `cjt1.FINGERPRINT.SECRET` (both lowercase hex); the cluster stores only
/// [`JoinTokenText::secret_hash`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenText {
    pub ca_fingerprint: String,
    pub secret: String,
}

const TOKEN_PREFIX: &str = "cjt1";

impl JoinTokenText {
    /// A new token for the CA whose fingerprint is `ca_fingerprint`, with 128 random bits.
    pub fn generate(ca_fingerprint: &str) -> Result<JoinTokenText, TlsError> {
        let mut secret = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| refused("no randomness for a join token".to_owned()))?;
        Ok(JoinTokenText {
            ca_fingerprint: ca_fingerprint.to_owned(),
            secret: secret.iter().map(|byte| format!("{byte:02x}")).collect(),
        })
    }

    /// Reads a token line; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<JoinTokenText, String> {
        let hex = |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_hexdigit());
        let mut parts = text.trim().split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(TOKEN_PREFIX), Some(fingerprint), Some(secret), None) if hex(fingerprint, 64) && hex(secret, 32) => {
                Ok(JoinTokenText {
                    ca_fingerprint: fingerprint.to_ascii_lowercase(),
                    secret: secret.to_ascii_lowercase(),
                })
            }
            _ => Err(format!(
                "not a join token: expected `{TOKEN_PREFIX}.` followed by 64 and 32 hex digits separated by a dot \
                 (`clusterctl cluster token` prints one)"
            )),
        }
    }

    /// SHA-256 of the secret, lowercase hex: what the cluster stores.
    pub fn secret_hash(&self) -> String {
        fingerprint(self.secret.as_bytes())
    }
}

impl std::fmt::Display for JoinTokenText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{TOKEN_PREFIX}.{}.{}", self.ca_fingerprint, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_read_back_and_bad_ones_are_named() {
        let token = JoinTokenText::generate(&"ab".repeat(32)).unwrap();
        assert_eq!(JoinTokenText::parse(&token.to_string()), Ok(token.clone()));
        assert_ne!(JoinTokenText::generate(&"ab".repeat(32)).unwrap().secret, token.secret);
        assert_eq!(token.secret_hash().len(), 64);
        assert_ne!(token.secret_hash(), token.secret);
        for bad in ["", "cjt1", "cjt1.ab.cd", &format!("cjt2.{}.{}", "a".repeat(64), "b".repeat(32))] {
            assert!(JoinTokenText::parse(bad).unwrap_err().starts_with("not a join token"), "{bad}");
        }
    }

    #[test]
    fn the_ca_signs_exactly_the_name_and_address_asked() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_cert, ca_key) = crate::init_ca(dir.path()).unwrap();
        let ip: IpAddr = "192.0.2.4".parse().unwrap();
        let request = node_request("n4", ip).unwrap();
        let issued =
            sign_node_request(&ca_cert, &ca_key, &request.csr_pem, "n4", ip, NODE_CERTIFICATE_LIFETIME, 1_000_000)
                .unwrap();
        assert_eq!(issued.info.common_name.as_deref(), Some("n4"));
        assert_eq!(issued.info.not_before_unix, 1_000_000 - 60);
        let err = sign_node_request(&ca_cert, &ca_key, &request.csr_pem, "n5", ip, NODE_CERTIFICATE_LIFETIME, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not for node `n5`"), "{err}");
        let other: IpAddr = "192.0.2.5".parse().unwrap();
        let err = sign_node_request(&ca_cert, &ca_key, &request.csr_pem, "n4", other, NODE_CERTIFICATE_LIFETIME, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("only the name `n4` and the address 192.0.2.5 are certified"), "{err}");
        let err = sign_node_request(&ca_cert, &ca_key, "garbage", "n4", ip, NODE_CERTIFICATE_LIFETIME, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a valid CSR"), "{err}");
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn an_issued_certificate_carries_the_requesters_key() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_cert, ca_key) = crate::init_ca(dir.path()).unwrap();
        let ip: IpAddr = "192.0.2.4".parse().unwrap();
        let request = node_request("n4", ip).unwrap();
        let issued =
            sign_node_request(&ca_cert, &ca_key, &request.csr_pem, "n4", ip, NODE_CERTIFICATE_LIFETIME, 1_000).unwrap();
        let info = crate::pem_cert_info(&issued.cert_pem, "issued").unwrap();
        assert_eq!(info, issued.info);
        assert_eq!(crate::key_public_sha256(&request.key_pem).unwrap(), info.public_key_sha256);
        let other = node_request("n4", ip).unwrap();
        assert_ne!(crate::key_public_sha256(&other.key_pem).unwrap(), info.public_key_sha256);
    }
}
