//! The cluster's certificate authority and the mutual-TLS configurations built from it.
//!
//! Every peer and every remote client presents a certificate signed by the cluster CA, and checks
//! the other side's certificate against the same CA. `clusterctl ca init` and `clusterctl ca issue`
//! call [`init_ca`] and [`issue_certificate`]; `clusterd` and remote `clusterctl` call
//! [`server_config`] and [`client_config`].
//!
//! Nodes that join with a token get their certificate from [`join`]; a node presents its
//! certificate through an [`Identity`] that renewal replaces in place, and refuses clients whose
//! certificate the cluster revoked ([`Revocations`], checked by the verifier of
//! [`node_server_config`]).

mod identity;
pub mod join;

pub use identity::{node_client_config, node_server_config, Identity, Revocations};

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use thiserror::Error;
pub use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
pub use tokio_rustls::server::TlsStream as ServerTlsStream;
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The subject of every cluster CA. Node certificates are signed by a key that is re-paired with
/// this subject, so the CA certificate itself never has to be parsed.
const CA_COMMON_NAME: &str = "clusterd cluster CA";

/// Errors of certificate creation and loading; each names the file or object concerned.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("failed to read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("failed to write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists: refusing to overwrite a cluster CA")]
    CaExists { path: PathBuf },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("failed to generate a certificate for `{name}`: {source}")]
    Generate { name: String, source: rcgen::Error },
    #[error("invalid tls configuration: {0}")]
    Config(String),
    /// A certificate request that does not match what may be certified.
    #[error("{0}")]
    Refused(String),
}

/// Paths of the files `clusterctl ca init` and `ca issue` write.
pub fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.crt"), dir.join("ca.key"))
}

/// Creates `DIR/ca.crt` and `DIR/ca.key` (mode 0600). Refuses to overwrite an existing CA.
pub fn init_ca(dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert_path, key_path) = ca_paths(dir);
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(TlsError::CaExists { path: path.clone() });
        }
    }
    fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.to_owned(), source })?;
    let key = KeyPair::generate().map_err(|source| TlsError::Generate { name: "ca".into(), source })?;
    let cert = ca_params().self_signed(&key).map_err(|source| TlsError::Generate { name: "ca".into(), source })?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

pub(crate) fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// Issues `DIR/NAME.crt` and `DIR/NAME.key` (mode 0600), signed by the CA in `DIR`, valid for both
/// server and client authentication. `NAME` is always a DNS subject alternative name; `ips` and
/// `dns_names` add more.
pub fn issue_certificate(
    dir: &Path,
    name: &str,
    ips: &[IpAddr],
    dns_names: &[String],
) -> Result<(PathBuf, PathBuf), TlsError> {
    let (_, ca_key_path) = ca_paths(dir);
    let ca_key_pem = read_text(&ca_key_path)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|err| TlsError::Invalid { path: ca_key_path.clone(), what: format!("not a private key: {err}") })?;
    let issuer = Issuer::new(ca_params(), ca_key);

    let generate = |source| TlsError::Generate { name: name.to_owned(), source };
    let mut alt_names = vec![name.to_owned()];
    alt_names.extend(dns_names.iter().cloned());
    let mut params = CertificateParams::new(alt_names).map_err(generate)?;
    params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, name);
    params.distinguished_name = subject;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;

    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let write = |source| TlsError::Write { path: path.to_owned(), source };
    let mut file =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).map_err(write)?;
    file.write_all(contents).map_err(write)?;
    file.sync_all().map_err(write)
}

pub(crate) fn read_text(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// The three files a TLS endpoint needs: the cluster CA, its own certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub(crate) struct LoadedFiles {
    pub(crate) roots: RootCertStore,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

pub(crate) fn load(files: &TlsFiles) -> Result<LoadedFiles, TlsError> {
    let ca_certs = read_certs(&files.ca)?;
    let mut roots = RootCertStore::empty();
    for cert in ca_certs {
        roots.add(cert).map_err(|err| TlsError::Invalid {
            path: files.ca.clone(),
            what: format!("not a usable CA certificate: {err}"),
        })?;
    }
    let chain = read_certs(&files.cert)?;
    let key_pem = fs::read(&files.key).map_err(|source| TlsError::Read { path: files.key.clone(), source })?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|err| TlsError::Invalid { path: files.key.clone(), what: format!("unreadable private key: {err}") })?
        .ok_or_else(|| TlsError::Invalid {
            path: files.key.clone(),
            what: "no private key found in PEM file".into(),
        })?;
    Ok(LoadedFiles { roots, chain, key })
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|err| TlsError::Invalid { path: path.to_owned(), what: format!("unreadable certificate: {err}") })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid { path: path.to_owned(), what: "no certificate found in PEM file".into() });
    }
    Ok(certs)
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server side: presents the node certificate and requires a client certificate from the CA.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let loaded = load(files)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(loaded.roots), provider())
        .build()
        .map_err(|err| TlsError::Config(format!("client verifier for {}: {err}", files.ca.display())))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Config(err.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(loaded.chain, loaded.key)
        .map_err(|err| TlsError::Invalid {
            path: files.cert.clone(),
            what: format!("certificate and key do not form a usable pair: {err}"),
        })?;
    Ok(Arc::new(config))
}

/// Client side: verifies the server against the CA and presents our certificate.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let loaded = load(files)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Config(err.to_string()))?
        .with_root_certificates(loaded.roots)
        .with_client_auth_cert(loaded.chain, loaded.key)
        .map_err(|err| TlsError::Invalid {
            path: files.cert.clone(),
            what: format!("certificate and key do not form a usable pair: {err}"),
        })?;
    Ok(Arc::new(config))
}

/// SHA-256 of a certificate's DER, lowercase hex: how tokens name the CA and the cluster names
/// revoked certificates.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der).as_ref().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The fingerprint of the first certificate of the PEM file `path` (the cluster CA).
pub fn file_fingerprint(path: &Path) -> Result<String, TlsError> {
    let certs = read_certs(path)?;
    Ok(fingerprint(&certs[0]))
}

/// What a certificate says, as far as the cluster cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// SHA-256 of its DER ([`fingerprint`]).
    pub fingerprint: String,
    /// Its subject's common name.
    pub common_name: Option<String>,
    /// Validity, seconds since the Unix epoch.
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// SHA-256 of its subject public key (to match a key to a certificate).
    pub public_key_sha256: String,
}

/// Reads a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|err| format!("not an X.509 certificate: {err}"))?;
    let common_name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    let validity = cert.validity();
    Ok(CertInfo {
        fingerprint: fingerprint(der),
        common_name,
        not_before_unix: validity.not_before.timestamp(),
        not_after_unix: validity.not_after.timestamp(),
        public_key_sha256: fingerprint(cert.public_key().raw),
    })
}

/// Reads the first certificate of the PEM file `path`.
pub fn read_cert_info(path: &Path) -> Result<CertInfo, TlsError> {
    let certs = read_certs(path)?;
    cert_info(&certs[0]).map_err(|what| TlsError::Invalid { path: path.to_owned(), what })
}

/// Reads the first certificate of PEM text (`what` names it in errors).
pub fn pem_cert_info(pem: &str, what: &str) -> Result<CertInfo, String> {
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or_else(|| format!("{what}: no certificate in it"))?
        .map_err(|err| format!("{what}: not PEM: {err}"))?;
    cert_info(&der).map_err(|err| format!("{what}: {err}"))
}

/// SHA-256 of the public key of the PEM private key `key_pem` (to match [`CertInfo::public_key_sha256`]).
pub fn key_public_sha256(key_pem: &str) -> Result<String, String> {
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|err| format!("not a private key: {err}"))?;
    Ok(fingerprint(&rcgen::PublicKeyData::subject_public_key_info(&key)))
}

/// Writes `contents` to `path` with `mode`, replacing it atomically (a temporary file renamed).
pub fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    write_file(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(|source| TlsError::Write { path: path.to_owned(), source })
}

/// Writes a new file with `mode`; refuses to replace an existing one.
pub fn create_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let write = |source| TlsError::Write { path: path.to_owned(), source };
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(write)?;
    file.write_all(contents).map_err(write)?;
    file.sync_all().map_err(write)
}

/// The name a client checks in the server certificate for `host:port` (an IP SAN or a DNS SAN).
pub fn server_name_for(address: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match address.rsplit_once(':') {
        Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => address,
    };
    ServerName::try_from(host.to_owned())
        .map_err(|err| TlsError::Config(format!("invalid server name in address `{address}`: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ca_then_node_certificate_builds_both_configs() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let (cert, key) = issue_certificate(dir.path(), "n1", &["127.0.0.1".parse().unwrap()], &[]).unwrap();
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode() & 0o777, 0o600);
        let files = TlsFiles { ca: dir.path().join("ca.crt"), cert, key };
        server_config(&files).unwrap();
        client_config(&files).unwrap();
    }

    #[test]
    fn second_init_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let err = init_ca(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ca.crt already exists"), "{err}");
    }

    #[test]
    fn garbage_certificate_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        issue_certificate(dir.path(), "n1", &[], &[]).unwrap();
        fs::write(dir.path().join("n1.crt"), "not a pem").unwrap();
        let files =
            TlsFiles { ca: dir.path().join("ca.crt"), cert: dir.path().join("n1.crt"), key: dir.path().join("n1.key") };
        let err = server_config(&files).unwrap_err().to_string();
        assert!(err.contains("n1.crt: no certificate found"), "{err}");
    }

    #[test]
    fn server_names_from_addresses() {
        assert!(matches!(server_name_for("127.0.0.1:7400").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name_for("[2001:db8::1]:7400").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name_for("n1.example:7400").unwrap(), ServerName::DnsName(_)));
    }
}
