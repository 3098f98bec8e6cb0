//! # Trust: who may talk to a node, and how the bytes are protected
//!
//! Everything here derives from one **cluster secret**: 32 random bytes, kept as 64 hex
//! digits in a file that every node of the cluster has (`security.secret_file`). From it,
//! by HMAC-SHA256 with a fixed label each, come
//! - the **cluster CA**: an Ed25519 key and a self-signed CA certificate (the same on every
//!   node, since the key and the certificate's fields are fixed);
//! - the **token key**: an HMAC-SHA256 key that signs client tokens ([`token`]).
//!
//! At each start a node makes a fresh Ed25519 key and a certificate for it signed by the
//! cluster CA (name `cartwheel`, common name the node id). All connections are TLS 1.3
//! (rustls, ring), server side and client side:
//! - **peers** present their node certificate as a TLS client certificate; the server checks
//!   it against the cluster CA. Only such a connection may open the node-to-node API
//!   (`Gate.peer`): holding the secret is what makes a process a member.
//! - **clients** present no certificate; they check the node's against the cluster CA (from
//!   their credentials file, [`crate::client::Credentials`]) and log in with a token
//!   (`Gate.login`), which returns the client API scoped to the token's grants.
//!
//! A connection's bootstrap capability is the `Gate`: before a login or a peer call succeeds,
//! nothing else is reachable. Key exchange happens once per connection, never per request.
//!
//! `security.mode = "insecure"` turns all of this off: plain TCP, any token logs in with
//! every grant, any connection may open the peer API. It must be written in the
//! configuration, and the node says so loudly at start. The embedded defaults and `up` are
//! secure: they create a development secret (and the admin credentials file the CLI reads
//! by default) under the data directory.
//!
//! Built without the `server` feature (the client library alone), this module holds only
//! what a client needs: [`Credentials`], [`client_config`] and [`server_name`]; the secret,
//! the keys, node identities and tokens come with `server`.
//!
//! The secret never crosses the wire. A client's credentials hold a token and the CA
//! *certificate* (public), never the secret. Rotating the secret rotates everything: every
//! node certificate and every token.

#[cfg(feature = "server")]
pub mod token;

use std::io;
use std::path::Path;
use std::sync::Arc;

#[cfg(feature = "server")]
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ED25519,
};
use rustls::pki_types::{CertificateDer, ServerName};
#[cfg(feature = "server")]
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;

#[cfg(feature = "server")]
pub use token::{Grants, Right};

/// The name every node certificate carries and every connection checks: the cluster CA is
/// private to the cluster, so the name only has to match between its members.
pub const SERVER_NAME: &str = "cartwheel";

/// Bytes of a cluster secret.
pub const SECRET_BYTES: usize = 32;

/// The file name of the admin credentials that `up` and the embedded defaults write beside
/// the cluster secret, and that the CLI reads by default.
pub const ADMIN_CREDENTIALS_FILE: &str = "admin.credentials";

/// Why the security material could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The secret file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The secret file does not hold 64 hex digits.
    #[error("{path}: not a cluster secret (64 hex digits expected)")]
    BadSecret {
        /// The file.
        path: String,
    },
    /// A certificate or TLS configuration could not be built.
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

#[cfg(feature = "server")]
/// The cluster secret. Never logged, never sent.
#[derive(Clone)]
pub struct Secret([u8; SECRET_BYTES]);

#[cfg(feature = "server")]
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(feature = "server")]
impl Secret {
    /// A new secret from the operating system's random source.
    pub fn generate() -> Result<Self, SecurityError> {
        let mut bytes = [0u8; SECRET_BYTES];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| SecurityError::Tls("the system random source failed".into()))?;
        Ok(Self(bytes))
    }

    /// Read the secret in `path`.
    pub fn load(path: &Path) -> Result<Self, SecurityError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| SecurityError::Io { path: name.clone(), source })?;
        let bytes =
            hex_decode(text.trim()).ok_or(SecurityError::BadSecret { path: name.clone() })?;
        let bytes: [u8; SECRET_BYTES] =
            bytes.try_into().map_err(|_| SecurityError::BadSecret { path: name })?;
        Ok(Self(bytes))
    }

    /// Write a new secret to `path` (mode 0600), which must not exist yet.
    pub fn create(path: &Path) -> Result<Self, SecurityError> {
        let secret = Self::generate()?;
        let io_error = |source| SecurityError::Io { path: path.display().to_string(), source };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_error)?;
        }
        write_private(path, format!("{}\n", hex_encode(&secret.0)).as_bytes(), true)
            .map_err(io_error)?;
        Ok(secret)
    }

    /// Read the secret in `path`, or create it there when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, SecurityError> {
        match Self::create(path) {
            Err(SecurityError::Io { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists =>
            {
                Self::load(path)
            }
            other => other,
        }
    }

    /// 32 bytes for one purpose, named by `label`: HMAC-SHA256 of the label under the secret.
    fn derive(&self, label: &str) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let tag = ring::hmac::sign(&key, label.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// Write `bytes` to `path` readable by its owner only; with `new`, fail if it exists.
fn write_private(path: &Path, bytes: &[u8], new: bool) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Write `text` to `path` (mode 0600), replacing what was there.
pub fn write_private_file(path: &Path, text: &str) -> io::Result<()> {
    write_private(path, text.as_bytes(), false)
}

#[cfg(feature = "server")]
/// The cluster's keys, derived from its secret: the CA and the token key.
pub struct ClusterKeys {
    ca_key: KeyPair,
    ca: rcgen::Certificate,
    token_key: ring::hmac::Key,
}

#[cfg(feature = "server")]
impl std::fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKeys(..)")
    }
}

#[cfg(feature = "server")]
/// PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410): a fixed prefix, then the 32 bytes.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn tls_error(e: impl std::fmt::Display) -> SecurityError {
    SecurityError::Tls(e.to_string())
}

#[cfg(feature = "server")]
impl ClusterKeys {
    /// Derive the CA and the token key from `secret`. The same secret gives the same CA
    /// certificate on every node.
    pub fn derive(secret: &Secret) -> Result<Self, SecurityError> {
        let seed = secret.derive("cartwheel ca ed25519 v1");
        let pkcs8: Vec<u8> = ED25519_PKCS8_PREFIX.iter().chain(seed.iter()).copied().collect();
        let ca_key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
            &PKCS_ED25519,
        )
        .map_err(tls_error)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "cartwheel cluster CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(4000, 1, 1);
        let ca = params.self_signed(&ca_key).map_err(tls_error)?;
        let token_key =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret.derive("cartwheel tokens v1"));
        Ok(Self { ca_key, ca, token_key })
    }

    /// The CA certificate, PEM: what clients check nodes against.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// The key that signs and checks tokens.
    pub fn token_key(&self) -> &ring::hmac::Key {
        &self.token_key
    }

    /// A fresh key and a certificate for it, signed by the CA, for node `node_id`.
    pub fn node_identity(&self, node_id: &str) -> Result<Identity, SecurityError> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(tls_error)?;
        let mut params =
            CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(tls_error)?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, node_id);
        params.distinguished_name = name;
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(4000, 1, 1);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).map_err(tls_error)?;
        Ok(Identity {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            ca: self.ca.der().clone(),
        })
    }
}

#[cfg(feature = "server")]
/// A node's certificate and key for this run, with the CA that signed it.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    ca: CertificateDer<'static>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, SecurityError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(tls_error)?;
    Ok(Arc::new(roots))
}

/// The server name connections check the node's certificate against.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("a fixed, valid DNS name")
}

#[cfg(feature = "server")]
impl Identity {
    /// The node's TLS server: TLS 1.3 only; a client certificate is optional, and when
    /// present must chain to the cluster CA (such a connection is a member's).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, SecurityError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots(&self.ca)?,
            provider(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(tls_error)?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], PrivateKeyDer::Pkcs8(self.key.clone_key()))
            .map_err(tls_error)?;
        Ok(Arc::new(config))
    }

    /// The node's TLS client, for its connections to peers: checks the peer against the
    /// cluster CA and presents this node's certificate.
    pub fn peer_client_config(&self) -> Result<Arc<rustls::ClientConfig>, SecurityError> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_root_certificates(roots(&self.ca)?)
            .with_client_auth_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .map_err(tls_error)?;
        Ok(Arc::new(config))
    }
}

/// A client's TLS configuration: TLS 1.3, the node checked against the CA in `ca_pem`, no
/// client certificate.
pub fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, SecurityError> {
    use rustls::pki_types::pem::PemObject as _;
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| SecurityError::Tls(format!("the CA certificate does not parse: {e}")))?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_root_certificates(roots(&ca)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(feature = "server")]
/// What a running node secures its connections with: its cluster's keys, and a TLS server
/// and client made for this run's node certificate.
pub struct NodeSecurity {
    keys: ClusterKeys,
    /// Accepts clients' and peers' TLS sessions.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Opens TLS sessions to peers, presenting the node's certificate.
    pub connector: tokio_rustls::TlsConnector,
}

#[cfg(feature = "server")]
impl NodeSecurity {
    /// Build it from `config.security`; `None` in insecure mode. Reads the secret (or creates
    /// it, where the configuration allows: then also writes the admin credentials beside it,
    /// [`ADMIN_CREDENTIALS_FILE`], unless a valid one is there).
    pub fn start(config: &crate::config::Config) -> Result<Option<Self>, SecurityError> {
        let security = &config.security;
        if security.mode == crate::config::SecurityMode::Insecure {
            return Ok(None);
        }
        let secret = if security.create_secret {
            Secret::load_or_create(&security.secret_file)?
        } else {
            Secret::load(&security.secret_file)?
        };
        let keys = ClusterKeys::derive(&secret)?;
        if security.create_secret {
            let dir = security.secret_file.parent().unwrap_or(Path::new("."));
            keys.ensure_admin_credentials(&dir.join(ADMIN_CREDENTIALS_FILE))?;
        }
        let identity = keys.node_identity(&config.node.id)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config()?);
        let connector = tokio_rustls::TlsConnector::from(identity.peer_client_config()?);
        Ok(Some(Self { keys, acceptor, connector }))
    }

    /// The cluster's keys.
    pub fn keys(&self) -> &ClusterKeys {
        &self.keys
    }
}

#[cfg(feature = "server")]
impl ClusterKeys {
    /// Write credentials with every grant (`*=rw,admin`) to `path`, unless it already holds
    /// credentials that are valid for this cluster.
    pub fn ensure_admin_credentials(&self, path: &Path) -> Result<(), SecurityError> {
        if let Ok(existing) = Credentials::load(path) {
            let valid = token::verify(&self.token_key, &existing.token).is_ok()
                && existing.ca_pem.as_deref() == Some(self.ca_pem().as_str());
            if valid {
                return Ok(());
            }
        }
        let (token, _) = token::mint(&self.token_key, &Grants::all())
            .map_err(|e| SecurityError::Tls(e.to_string()))?;
        let credentials = Credentials { token, ca_pem: Some(self.ca_pem()) };
        write_private_file(path, &credentials.to_text())
            .map_err(|source| SecurityError::Io { path: path.display().to_string(), source })
    }
}

/// What a client needs to reach a node: a token, and the cluster CA's certificate (none for
/// a node in insecure mode: then the connection is plain TCP).
///
/// As a file (what `up` writes, `token create` prints, the CLI reads): comment lines start
/// with `#`; the first other line is the token; a PEM certificate block follows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The token (`Gate.login`); may be empty for an insecure node.
    pub token: String,
    /// The cluster CA certificate, PEM.
    pub ca_pem: Option<String>,
}

impl Credentials {
    /// The file form.
    pub fn to_text(&self) -> String {
        let mut text = String::from("# cartwheel credentials: a token, then the cluster CA\n");
        text.push_str(&self.token);
        text.push('\n');
        if let Some(ca) = &self.ca_pem {
            text.push_str(ca);
        }
        text
    }

    /// Parse the file form.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut credentials = Self::default();
        let mut pem: Option<String> = None;
        for line in text.lines().map(str::trim) {
            if let Some(block) = pem.as_mut() {
                block.push_str(line);
                block.push('\n');
                if line.starts_with("-----END") {
                    credentials.ca_pem = pem.take();
                }
            } else if line.starts_with("-----BEGIN") {
                pem = Some(format!("{line}\n"));
            } else if !(line.is_empty() || line.starts_with('#')) {
                if !credentials.token.is_empty() {
                    return Err("more than one token line".into());
                }
                credentials.token = line.to_string();
            }
        }
        if pem.is_some() {
            return Err("a certificate block is not closed".into());
        }
        Ok(credentials)
    }

    /// Read the file at `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The node id a node certificate names (its subject's common name), from its DER bytes.
/// Only meaningful for a certificate the cluster CA signed, which the TLS handshake checked:
/// then it is the authenticated identity of the peer on the connection.
pub fn certificate_node_id(der: &[u8]) -> Option<String> {
    let (_, certificate, _) = der_read(der)?;
    let (_, mut tbs, _) = der_read(certificate)?;
    // version [0] (optional), serial, signature algorithm, issuer, validity, subject.
    let mut fields = Vec::new();
    while !tbs.is_empty() && fields.len() < 6 {
        let (tag, value, rest) = der_read(tbs)?;
        fields.push((tag, value));
        tbs = rest;
    }
    let skip = usize::from(fields.first()?.0 == 0xa0);
    let (_, mut subject) = *fields.get(skip + 4)?;
    let mut common_name = None;
    while !subject.is_empty() {
        let (_, set, rest) = der_read(subject)?;
        subject = rest;
        let (_, attribute, _) = der_read(set)?;
        let (_, oid, value) = der_read(attribute)?;
        if oid == [0x55, 0x04, 0x03] {
            let (_, text, _) = der_read(value)?;
            common_name = Some(String::from_utf8(text.to_vec()).ok()?);
        }
    }
    common_name
}

/// One DER element of `bytes`: its tag, its contents and what follows it.
fn der_read(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count].iter().fold(0usize, |len, b| (len << 8) | usize::from(*b));
        rest = &rest[count..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Lowercase hex of `bytes`.
pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of hex `text` (either case), or `None` if it is not hex.
pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

#[cfg(all(test, feature = "server"))]
mod tests {
    use super::*;

    /// One secret gives one CA, byte for byte, wherever it is derived; another gives another.
    #[test]
    fn the_ca_is_a_function_of_the_secret() {
        let secret = Secret::generate().unwrap();
        let a = ClusterKeys::derive(&secret).unwrap();
        let b = ClusterKeys::derive(&secret).unwrap();
        assert_eq!(a.ca_pem(), b.ca_pem());
        let other = ClusterKeys::derive(&Secret::generate().unwrap()).unwrap();
        assert_ne!(a.ca_pem(), other.ca_pem());
    }

    /// A secret written and read back is the same; a file that is not one is refused.
    #[test]
    fn secrets_round_trip_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.secret");
        let created = Secret::load_or_create(&path).unwrap();
        let loaded = Secret::load_or_create(&path).unwrap();
        assert_eq!(created.0, loaded.0);
        assert!(Secret::create(&path).is_err(), "create never overwrites");
        std::fs::write(&path, "not hex at all").unwrap();
        assert!(matches!(Secret::load(&path), Err(SecurityError::BadSecret { .. })));
        use std::os::unix::fs::PermissionsExt as _;
        let other = dir.path().join("other.secret");
        Secret::create(&other).unwrap();
        assert_eq!(std::fs::metadata(&other).unwrap().permissions().mode() & 0o777, 0o600);
    }

    /// Node identities and the TLS configurations build from derived keys.
    #[test]
    fn tls_configurations_build() {
        let keys = ClusterKeys::derive(&Secret::generate().unwrap()).unwrap();
        let identity = keys.node_identity("n1").unwrap();
        identity.server_config().unwrap();
        identity.peer_client_config().unwrap();
        client_config(&keys.ca_pem()).unwrap();
        assert!(client_config("garbage").is_err());
    }

    /// Credentials written by `ensure_admin_credentials` parse back, are kept while valid and
    /// replaced when another secret made them.
    #[test]
    fn admin_credentials_are_written_once_per_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ADMIN_CREDENTIALS_FILE);
        let keys = ClusterKeys::derive(&Secret::generate().unwrap()).unwrap();
        keys.ensure_admin_credentials(&path).unwrap();
        let first = Credentials::load(&path).unwrap();
        assert_eq!(first.ca_pem.as_deref(), Some(keys.ca_pem().as_str()));
        let grants = token::verify(keys.token_key(), &first.token).unwrap();
        assert!(grants.admin && grants.allows("any", Right::Write));
        keys.ensure_admin_credentials(&path).unwrap();
        assert_eq!(Credentials::load(&path).unwrap(), first, "valid credentials are kept");
        let other = ClusterKeys::derive(&Secret::generate().unwrap()).unwrap();
        other.ensure_admin_credentials(&path).unwrap();
        assert_ne!(Credentials::load(&path).unwrap(), first);
        assert!(Credentials::parse("a\nb\n").is_err());
        assert!(Credentials::parse("-----BEGIN CERTIFICATE-----\nabc\n").is_err());
    }

    /// A node certificate names its node, whatever the id's length.
    #[test]
    fn a_node_certificate_names_its_node() {
        let keys = ClusterKeys::derive(&Secret::generate().unwrap()).unwrap();
        for id in ["n1", "a-much_longer.node-id", &"x".repeat(238)] {
            let identity = keys.node_identity(id).unwrap();
            assert_eq!(certificate_node_id(&identity.cert).as_deref(), Some(id));
        }
        assert_eq!(certificate_node_id(keys.ca.der()).as_deref(), Some("cartwheel cluster CA"));
        assert_eq!(certificate_node_id(b"garbage"), None);
        assert_eq!(certificate_node_id(&[]), None);
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex_decode(&hex_encode(&[0, 1, 0xab, 0xff])).unwrap(), vec![0, 1, 0xab, 0xff]);
        assert!(hex_decode("abc").is_none());
        assert!(hex_decode("zz").is_none());
    }
}
