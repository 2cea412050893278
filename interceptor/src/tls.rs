//! TLS on both sides of an intercepted session.
//!
//! Towards the task, the proxy must terminate TLS to see the protocol, so it
//! presents a certificate for whatever name the task dialled, minted on the
//! fly by a CA that lives on this host ([`LocalCa`]). Tasks trust it because
//! the operator installs the CA (`interceptor ca export`) in their trust
//! store; nothing else does. Towards the real store, the proxy originates its
//! own TLS with the verification the store's `upstream_tls` asks for
//! ([`UpstreamTlsConfig`]).
//!
//! Every config here is built with the ring provider passed explicitly: the
//! process-wide default provider is a global that another crate could
//! install differently, and rustls panics when none or two are compiled in.

use std::{
    collections::HashMap,
    fmt, fs,
    io::Write,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    server::{ClientHello, ParsedCertificate, ResolvesServerCert},
    sign::CertifiedKey,
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{
    pem::PemObject, CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime,
};
use tracing::{debug, warn};

use crate::config::UpstreamTls;

const CA_DIR: &str = "ca";
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
/// Where Debian-family systems keep the trust bundle `verify-full` uses when
/// a store names no `upstream_ca`.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

const DAY: Duration = Duration::from_secs(24 * 3600);
/// Ten years: the CA is installed by hand in trust stores, so replacing it is
/// an operator chore to be done rarely.
const CA_LIFETIME: Duration = Duration::from_secs(3653 * 24 * 3600);
/// Short-lived leaves: nobody revokes them, so a leaked one must expire soon.
const LEAF_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Leaves (and the CA) start an hour in the past so that a task whose clock
/// is slightly behind the host's still accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);
/// A cached leaf this close to expiry is minted again, so no session is
/// handed a certificate that expires while it runs (sessions last minutes).
const RENEW_BEFORE: Duration = DAY;
/// Bounds the memory a task can make the proxy spend by sending many SNI
/// names; well above the number of names a CI fleet really dials.
const LEAF_CACHE_CAP: usize = 1024;
/// The longest DNS name (RFC 1035), so a hostile SNI cannot inflate a leaf.
const MAX_DNS_NAME: usize = 253;

/// The provider every config in this module is built with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The local CA under `daemon.state_dir`: `ca/ca.pem` (the certificate
/// operators distribute) and `ca/ca.key` (PKCS#8 PEM, mode 0600, in a 0700
/// directory). Cloning is cheap and clones share one cache of minted leaves,
/// so every session for a name is served the same certificate.
#[derive(Clone)]
pub struct LocalCa {
    inner: Arc<CaInner>,
}

struct CaInner {
    dir: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    /// rcgen's view of the CA, rebuilt from the stored subject and key: rcgen
    /// only takes the subject, key usages and key-identifier method from it
    /// to sign leaves. The chain sent to clients uses `cert_der`.
    issuer: rcgen::Certificate,
    key: KeyPair,
    provider: Arc<CryptoProvider>,
    leaves: Mutex<LeafCache>,
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("cert", &self.cert_path())
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Loads the CA, creating it on first use (ECDSA P-256, CN "interceptor
    /// local CA <hostname>", 10 years, CA:true pathlen 0, keyCertSign and
    /// cRLSign only).
    ///
    /// The CA is built in a temporary directory and renamed into place as a
    /// whole, so a crash never leaves a certificate without its key (or the
    /// reverse), and two processes creating it at once (`ca export` during
    /// the daemon's first start) end up with the same CA. A CA that exists but
    /// cannot be read is an error, never replaced: clients already trust it.
    pub fn load_or_create(state_dir: &Path) -> Result<LocalCa> {
        let dir = state_dir.join(CA_DIR);
        let absent = match fs::read_dir(&dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read the local CA directory {}", dir.display())
                })
            }
        };
        if absent {
            create(state_dir, &dir)?;
        }
        Self::load(state_dir)
    }

    /// Loads the CA; an error if it does not exist yet.
    ///
    /// Beyond parsing, this checks that the key belongs to the certificate
    /// and mints and verifies one leaf, so a damaged or expired CA is
    /// reported here, naming the file, rather than as a failed handshake in
    /// every session.
    pub fn load(state_dir: &Path) -> Result<LocalCa> {
        let dir = state_dir.join(CA_DIR);
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let replace_hint = || {
            format!(
                "restore it from backup, or remove {} to have a new CA created (clients must then be given the new one)",
                dir.display()
            )
        };

        let cert_pem = fs::read_to_string(&cert_path).with_context(|| {
            format!(
                "cannot read the local CA certificate {}; it is created by `interceptor run` or `interceptor ca export`",
                cert_path.display()
            )
        })?;
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(&e));
        let cert_der = match certs {
            Ok(mut certs) if certs.len() == 1 => certs.remove(0),
            Ok(certs) => bail!(
                "the local CA certificate {} is damaged: it holds {}, expected one PEM certificate; {}",
                cert_path.display(),
                match certs.len() {
                    0 => "no certificate".to_string(),
                    n => format!("{n} certificates"),
                },
                replace_hint()
            ),
            Err(e) => bail!(
                "the local CA certificate {} is damaged: {e}; {}",
                cert_path.display(),
                replace_hint()
            ),
        };
        let Some((subject, spki)) = subject_and_key(&cert_der) else {
            bail!(
                "the local CA certificate {} is damaged: not an X.509 certificate interceptor can read; {}",
                cert_path.display(),
                replace_hint()
            );
        };

        let key_pem = fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read the local CA key {}", key_path.display()))?;
        if let Ok(meta) = fs::metadata(&key_path) {
            if meta.permissions().mode() & 0o077 != 0 {
                warn!(
                    "the local CA key {} is readable by other users (mode {:o}): anyone who reads it can impersonate every store to the tasks; chmod 600 it",
                    key_path.display(),
                    meta.permissions().mode() & 0o777
                );
            }
        }
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            anyhow!(
                "the local CA key {} is damaged: {e}; {}",
                key_path.display(),
                replace_hint()
            )
        })?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            bail!(
                "the local CA key {} is not an ECDSA P-256 key; {}",
                key_path.display(),
                replace_hint()
            );
        }
        if key.public_key_der() != spki {
            bail!(
                "the local CA key {} does not belong to the certificate {}; {}",
                key_path.display(),
                cert_path.display(),
                replace_hint()
            );
        }
        let issuer = ca_params(subject, SystemTime::now())
            .self_signed(&key)
            .with_context(|| format!("cannot use the local CA key {}", key_path.display()))?;

        let ca = LocalCa {
            inner: Arc::new(CaInner {
                dir,
                cert_pem,
                cert_der,
                issuer,
                key,
                provider: provider(),
                leaves: Mutex::new(LeafCache::new(LEAF_CACHE_CAP)),
            }),
        };
        ca.self_test().with_context(|| {
            format!(
                "the local CA {} cannot issue certificates clients accept",
                cert_path.display()
            )
        })?;
        Ok(ca)
    }

    /// The CA certificate as stored, PEM: what clients must trust.
    pub fn cert_pem(&self) -> &str {
        &self.inner.cert_pem
    }

    pub fn cert_path(&self) -> PathBuf {
        self.inner.dir.join(CA_CERT)
    }

    /// A server config presenting a leaf for the SNI name the client sent, or
    /// for `default_name` (a DNS name or an IP address) when it sent none or
    /// an unusable one: clients that dial an IP send no SNI, so the store's
    /// target is the best guess at the name they verify.
    ///
    /// The default leaf is minted now, so a bad `default_name` is reported
    /// at startup rather than at each handshake. `alpn` is the server's ALPN
    /// list; empty means no ALPN.
    pub fn server_config(
        &self,
        default_name: &str,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Arc<ServerConfig>> {
        let default = LeafName::parse(default_name).ok_or_else(|| {
            anyhow!("`{default_name}` is neither a DNS name nor an IP address: the local CA cannot issue a certificate for it")
        })?;
        self.leaf(&default)?;
        let mut config = ServerConfig::builder_with_provider(self.inner.provider.clone())
            .with_safe_default_protocol_versions()
            .context("the ring provider supports no default TLS version")?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(LeafResolver {
                ca: self.clone(),
                default,
            }));
        config.alpn_protocols = alpn;
        Ok(Arc::new(config))
    }

    /// The cached leaf for `name`, minted when absent or about to expire.
    ///
    /// Minting happens under the cache lock: it takes well under a
    /// millisecond (one P-256 key and one signature), and holding the lock
    /// means concurrent sessions for a new name share one leaf.
    fn leaf(&self, name: &LeafName) -> Result<Arc<CertifiedKey>> {
        let mut cache = self
            .inner
            .leaves
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = SystemTime::now();
        if let Some(leaf) = cache.get(name, now) {
            return Ok(leaf);
        }
        let (key, not_after) = self.mint(name, now)?;
        debug!(name = %name, "minted a leaf certificate");
        cache.insert(name.clone(), key.clone(), not_after, now);
        Ok(key)
    }

    /// A new leaf for `name`: ECDSA P-256, EKU serverAuth, one SAN, valid
    /// from an hour ago for [`LEAF_LIFETIME`]; the chain is `[leaf, ca]` so
    /// clients that only hold the CA can build the path.
    fn mint(&self, name: &LeafName, now: SystemTime) -> Result<(Arc<CertifiedKey>, SystemTime)> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("cannot generate a leaf key")?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.to_string());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![match name {
            LeafName::Ip(ip) => SanType::IpAddress(*ip),
            LeafName::Dns(dns) => SanType::DnsName(
                dns.as_str()
                    .try_into()
                    .with_context(|| format!("`{dns}` cannot be a certificate name"))?,
            ),
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let not_after = now + LEAF_LIFETIME;
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(now - BACKDATE);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(not_after);
        let cert = params
            .signed_by(&key, &self.inner.issuer, &self.inner.key)
            .with_context(|| format!("cannot sign a leaf certificate for {name}"))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified = CertifiedKey::from_der(
            vec![cert.der().clone(), self.inner.cert_der.clone()],
            key_der,
            &self.inner.provider,
        )
        .with_context(|| format!("cannot use the leaf minted for {name}"))?;
        Ok((Arc::new(certified), not_after))
    }

    /// Mints a leaf and verifies it against the CA as a client would.
    fn self_test(&self) -> Result<()> {
        let name = LeafName::Dns("interceptor.invalid".to_string());
        let (leaf, _) = self.mint(&name, SystemTime::now())?;
        let mut roots = RootCertStore::empty();
        roots.add(self.inner.cert_der.clone())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.inner.provider.clone(),
        )
        .build()?;
        verifier.verify_server_cert(
            &leaf.cert[0],
            &leaf.cert[1..],
            &ServerName::try_from("interceptor.invalid")?,
            &[],
            UnixTime::now(),
        )?;
        Ok(())
    }
}

/// Writes a new CA into `state_dir/ca.tmp-<pid>` and renames the directory
/// to `state_dir/ca`. Losing the rename to another process (the target is
/// no longer empty) is fine: the caller loads the winner's CA.
fn create(state_dir: &Path, dir: &Path) -> Result<()> {
    let cerr =
        |what: &str, path: &Path| format!("cannot create the local CA: {what} {}", path.display());
    fs::create_dir_all(state_dir).with_context(|| cerr("creating", state_dir))?;
    let _ = fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700));
    remove_stale_temp_dirs(state_dir);

    let tmp = state_dir.join(format!("{CA_DIR}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .with_context(|| cerr("creating", &tmp))?;
    let written = (|| -> Result<()> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .context("cannot create the local CA: generating its key")?;
        let mut subject = DistinguishedName::new();
        subject.push(
            DnType::CommonName,
            format!("interceptor local CA {}", crate::audit::hostname()),
        );
        let cert = ca_params(subject, SystemTime::now())
            .self_signed(&key)
            .context("cannot create the local CA: signing its certificate")?;
        write_new(&tmp.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)
            .with_context(|| cerr("writing", &tmp.join(CA_KEY)))?;
        write_new(&tmp.join(CA_CERT), cert.pem().as_bytes(), 0o644)
            .with_context(|| cerr("writing", &tmp.join(CA_CERT)))?;
        fs::File::open(&tmp)
            .and_then(|d| d.sync_all())
            .with_context(|| cerr("syncing", &tmp))?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match fs::rename(&tmp, dir) {
        Ok(()) => {
            if let Ok(d) = fs::File::open(state_dir) {
                let _ = d.sync_all();
            }
            tracing::info!(cert = %dir.join(CA_CERT).display(), "created the local CA; install its certificate in the tasks' trust stores (`interceptor ca export`)");
            Ok(())
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e).with_context(|| cerr("renaming into place", dir))
        }
    }
}

/// Removes `ca.tmp-<pid>` directories whose process is gone: a crash while
/// creating the CA leaves one, holding a key nobody trusts.
fn remove_stale_temp_dirs(state_dir: &Path) {
    let Ok(entries) = fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&format!("{CA_DIR}.tmp-")))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Creates `path` with `mode` from the start, so the key is never readable
/// by others even for a moment, and syncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The CA's parameters. Also used at load time to rebuild rcgen's issuer:
/// only `subject` must match the stored certificate (leaves name their
/// issuer by it), and the key identifier is derived from the key.
fn ca_params(subject: DistinguishedName, now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(now - BACKDATE);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(now + CA_LIFETIME);
    params
}

/// Whole seconds since the epoch: certificate times have no fractions.
fn since_epoch(t: SystemTime) -> Duration {
    Duration::from_secs(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => {
            format!(
                "PEM section without its `{}` line",
                String::from_utf8_lossy(end_marker)
            )
        }
        Error::IllegalSectionStart { line } => {
            format!("bad PEM line `{}`", String::from_utf8_lossy(line))
        }
        other => format!("bad PEM: {other}"),
    }
}

/// The subject and the DER SubjectPublicKeyInfo of a certificate.
///
/// rcgen can only parse certificates with its x509-parser feature, which
/// this build does not have; these two fields are all that signing leaves
/// with a stored CA needs, and the self-test in [`LocalCa::load`] catches a
/// subject rebuilt differently from the original. Only what interceptor
/// writes is understood: single-attribute RDNs with UTF8String or
/// PrintableString values.
fn subject_and_key(cert: &[u8]) -> Option<(DistinguishedName, &[u8])> {
    let (cert, _) = Der(cert).expect(0x30)?;
    let (tbs, _) = Der(cert).expect(0x30)?;
    let mut tbs = Der(tbs);
    let (mut tag, _, _) = tbs.next()?;
    if tag == 0xa0 {
        // [0] version
        (tag, _, _) = tbs.next()?;
    }
    if tag != 0x02 {
        return None; // serialNumber
    }
    tbs.expect(0x30)?; // signature
    tbs.expect(0x30)?; // issuer
    tbs.expect(0x30)?; // validity
    let (subject, _) = tbs.expect(0x30)?;
    let (_, spki) = tbs.expect(0x30)?;

    let mut dn = DistinguishedName::new();
    let mut rdns = Der(subject);
    while !rdns.0.is_empty() {
        let (rdn, _) = rdns.expect(0x31)?;
        let (atv, _) = Der(rdn).expect(0x30)?;
        let mut atv = Der(atv);
        let (oid, _) = atv.expect(0x06)?;
        let (tag, value, _) = atv.next()?;
        let value = std::str::from_utf8(value).ok()?;
        let value = match tag {
            0x0c => DnValue::Utf8String(value.to_string()),
            0x13 => DnValue::PrintableString(value.try_into().ok()?),
            _ => return None,
        };
        dn.push(DnType::from_oid(&oid_arcs(oid)?), value);
    }
    Some((dn, spki))
}

fn oid_arcs(oid: &[u8]) -> Option<Vec<u64>> {
    let mut arcs = Vec::new();
    let mut acc: u64 = 0;
    for &b in oid {
        acc = acc.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
    }
    (!arcs.is_empty()).then_some(arcs)
}

/// A DER reader over the remaining bytes.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next element: tag, contents, and the whole encoding.
    fn next(&mut self) -> Option<(u8, &'a [u8], &'a [u8])> {
        let all = self.0;
        let (&tag, rest) = all.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None; // indefinite or absurd lengths are not DER
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |a, &b| (a << 8) | usize::from(b));
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let header = all.len() - rest.len();
        self.0 = &rest[len..];
        Some((tag, &rest[..len], &all[..header + len]))
    }

    /// The next element, which must have `tag`: contents and whole encoding.
    fn expect(&mut self, tag: u8) -> Option<(&'a [u8], &'a [u8])> {
        match self.next()? {
            (t, contents, whole) if t == tag => Some((contents, whole)),
            _ => None,
        }
    }
}

/// What a leaf is issued for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LeafName {
    /// Lower-cased, without a trailing dot.
    Dns(String),
    Ip(IpAddr),
}

impl LeafName {
    /// An IP address (IPv6 optionally in brackets) or a DNS name; `None`
    /// for anything else, including names longer than 253 bytes or with
    /// characters outside letters, digits, `-` and `_`.
    fn parse(s: &str) -> Option<LeafName> {
        let unbracketed = s
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Some(LeafName::Ip(ip));
        }
        let name = s.strip_suffix('.').unwrap_or(s);
        let valid = !name.is_empty()
            && name.len() <= MAX_DNS_NAME
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        valid.then(|| LeafName::Dns(name.to_ascii_lowercase()))
    }
}

impl fmt::Display for LeafName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeafName::Dns(name) => f.write_str(name),
            LeafName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

struct CachedLeaf {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

/// Minted leaves by name, at most `cap` of them.
struct LeafCache {
    cap: usize,
    leaves: HashMap<LeafName, CachedLeaf>,
}

impl LeafCache {
    fn new(cap: usize) -> LeafCache {
        LeafCache {
            cap,
            leaves: HashMap::new(),
        }
    }

    /// The leaf for `name` unless it is due for renewal.
    fn get(&self, name: &LeafName, now: SystemTime) -> Option<Arc<CertifiedKey>> {
        self.leaves
            .get(name)
            .filter(|leaf| leaf.not_after > now + RENEW_BEFORE)
            .map(|leaf| leaf.key.clone())
    }

    /// Stores a leaf; when full, first drops leaves due for renewal, then the
    /// one minted longest ago (the earliest to expire).
    fn insert(
        &mut self,
        name: LeafName,
        key: Arc<CertifiedKey>,
        not_after: SystemTime,
        now: SystemTime,
    ) {
        if !self.leaves.contains_key(&name) && self.leaves.len() >= self.cap {
            self.leaves
                .retain(|_, leaf| leaf.not_after > now + RENEW_BEFORE);
            while self.leaves.len() >= self.cap {
                let Some(oldest) = self
                    .leaves
                    .iter()
                    .min_by_key(|(_, leaf)| leaf.not_after)
                    .map(|(name, _)| name.clone())
                else {
                    break;
                };
                self.leaves.remove(&oldest);
            }
        }
        self.leaves.insert(name, CachedLeaf { key, not_after });
    }
}

/// Picks the leaf for a handshake: the SNI name when the client sent a
/// usable one, else the config's default name.
#[derive(Debug)]
struct LeafResolver {
    ca: LocalCa,
    default: LeafName,
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = match hello.server_name() {
            None => self.default.clone(),
            Some(sni) => LeafName::parse(sni).unwrap_or_else(|| {
                debug!(sni = %sni.escape_debug(), default = %self.default, "unusable SNI name; presenting the default certificate");
                self.default.clone()
            }),
        };
        match self.ca.leaf(&name) {
            Ok(key) => Some(key),
            Err(e) => {
                warn!(name = %name, "cannot mint a leaf certificate: {e:#}");
                None
            }
        }
    }
}

/// TLS server configs of one store, one per name clients dial (the
/// default name when they send no SNI), built on demand and cached.
pub struct ServerConfigs {
    ca: LocalCa,
    alpn: Vec<Vec<u8>>,
    store: String,
    cache: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

impl ServerConfigs {
    /// `alpn`: the protocols the proxy offers clients (empty: no ALPN).
    pub fn new(ca: LocalCa, alpn: Vec<Vec<u8>>, store: &str) -> ServerConfigs {
        ServerConfigs {
            ca,
            alpn,
            store: store.to_string(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The config for sessions that dialled `name` (a DNS name or an IP
    /// address). None, with a warning, when no leaf can be minted for it.
    pub fn get(&self, name: &str) -> Option<Arc<ServerConfig>> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cache.get(name) {
            return Some(c.clone());
        }
        match self.ca.server_config(name, self.alpn.clone()) {
            Ok(c) => {
                if cache.len() > 1024 {
                    cache.clear();
                }
                cache.insert(name.to_string(), c.clone());
                Some(c)
            }
            Err(e) => {
                warn!(store = %self.store, error = %e, "cannot build a TLS server config: client TLS refused");
                None
            }
        }
    }
}

/// TLS from the proxy to a store, as its `upstream_tls` and `upstream_ca`
/// ask. Built once per store at startup so that a missing or bad CA file
/// stops the daemon instead of failing each session.
#[derive(Debug, Clone)]
pub struct UpstreamTlsConfig {
    mode: UpstreamTls,
    client: Option<Arc<ClientConfig>>,
}

impl UpstreamTlsConfig {
    /// `Prefer`/`Require` encrypt without verifying the server's certificate
    /// (libpq's `sslmode=require`): many internal stores run on self-signed
    /// certificates, and encryption alone still defeats passive sniffing.
    /// Handshake signatures are still checked, so the peer must hold the key
    /// of the certificate it sends. As in libpq, a configured `upstream_ca`
    /// makes these modes check the chain (but not the name).
    ///
    /// `VerifyFull` checks the chain against `upstream_ca` (a PEM file, which
    /// may hold several certificates) or, without one, the system bundle,
    /// and checks that the certificate names the host dialled.
    pub fn new(
        mode: UpstreamTls,
        upstream_ca: Option<&Path>,
        alpn: Vec<Vec<u8>>,
    ) -> Result<UpstreamTlsConfig> {
        let provider = provider();
        let builder = || {
            ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .context("the ring provider supports no default TLS version")
        };
        let mut config = match mode {
            UpstreamTls::Disable => return Ok(UpstreamTlsConfig { mode, client: None }),
            UpstreamTls::Prefer | UpstreamTls::Require => {
                let roots = upstream_ca.map(read_upstream_ca).transpose()?;
                builder()?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(EncryptOnly {
                        algorithms: provider.signature_verification_algorithms,
                        roots,
                    }))
                    .with_no_client_auth()
            }
            UpstreamTls::VerifyFull => {
                let roots = match upstream_ca {
                    Some(path) => read_upstream_ca(path)?,
                    None => read_system_bundle(Path::new(SYSTEM_BUNDLE))?,
                };
                builder()?
                    .with_root_certificates(roots)
                    .with_no_client_auth()
            }
        };
        config.alpn_protocols = alpn;
        Ok(UpstreamTlsConfig {
            mode,
            client: Some(Arc::new(config)),
        })
    }

    pub fn mode(&self) -> UpstreamTls {
        self.mode
    }

    /// `None` when the store's upstream TLS is disabled.
    pub fn connector(&self) -> Option<tokio_rustls::TlsConnector> {
        self.client.clone().map(tokio_rustls::TlsConnector::from)
    }

    /// The name to send as SNI and to verify: the store target's hostname
    /// when it has one, else its IP address (IPv6 with or without brackets).
    pub fn server_name(host: &str) -> Result<ServerName<'static>> {
        let unbracketed = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        ServerName::try_from(unbracketed.to_string()).map_err(|_| {
            anyhow!("`{host}` is neither a DNS name nor an IP address: it cannot name an upstream TLS server")
        })
    }
}

/// Every certificate in the store's `upstream_ca`; any unusable one is an
/// error, since the operator listed it on purpose.
fn read_upstream_ca(path: &Path) -> Result<RootCertStore> {
    let pem =
        fs::read(path).with_context(|| format!("cannot read upstream_ca {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow!(
                "upstream_ca {} is not a PEM file: {}",
                path.display(),
                pem_error(&e)
            )
        })?;
    if certs.is_empty() {
        bail!(
            "upstream_ca {} holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----` blocks)",
            path.display()
        );
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            anyhow!(
                "upstream_ca {}: certificate {} cannot be a trust anchor: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(roots)
}

/// The system trust bundle; certificates webpki cannot use are skipped, as
/// every distribution ships a few.
fn read_system_bundle(path: &Path) -> Result<RootCertStore> {
    let hint = "install ca-certificates, or set upstream_ca on the store";
    let pem = fs::read(path).with_context(|| {
        format!(
            "cannot read the system CA bundle {} ({hint})",
            path.display()
        )
    })?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(
        CertificateDer::pem_slice_iter(&pem).filter_map(std::result::Result::ok),
    );
    if added == 0 {
        bail!(
            "the system CA bundle {} holds no usable certificate ({hint})",
            path.display()
        );
    }
    Ok(roots)
}

/// `sslmode=require` verification: any certificate (or, with `roots`, any
/// chaining to them, for any name), but handshake signatures are verified
/// with the provider's algorithms so the peer must own the key.
#[derive(Debug)]
struct EncryptOnly {
    algorithms: WebPkiSupportedAlgorithms,
    roots: Option<RootCertStore>,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &ParsedCertificate::try_from(end_entity)?,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    /// A client trusting only `ca`.
    fn client_trusting(ca: &LocalCa, alpn: Vec<Vec<u8>>) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.inner.cert_der.clone())
            .expect("CA is a trust anchor");
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn;
        TlsConnector::from(Arc::new(config))
    }

    struct Handshake {
        chain: Vec<CertificateDer<'static>>,
        alpn: Option<Vec<u8>>,
    }

    /// One connection over loopback; the server writes two bytes so the
    /// client also sees the server's side of the handshake finish.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: TlsConnector,
        name: &str,
    ) -> std::io::Result<Handshake> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(server);
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            tls.write_all(b"ok").await?;
            tls.shutdown().await
        });
        let tcp = TcpStream::connect(addr).await?;
        let name = UpstreamTlsConfig::server_name(name).expect("server name");
        let result = async {
            let mut tls = client.connect(name, tcp).await?;
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"ok");
            let conn = tls.get_ref().1;
            Ok(Handshake {
                chain: conn
                    .peer_certificates()
                    .expect("server sent certificates")
                    .iter()
                    .map(|c| c.clone().into_owned())
                    .collect(),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            })
        }
        .await;
        if result.is_ok() {
            server.await.expect("server task")?;
        } else {
            server.abort();
        }
        result
    }

    #[test]
    fn created_then_loaded_with_private_modes() {
        let state = tempfile::tempdir().expect("tempdir");
        let created = LocalCa::load_or_create(state.path()).expect("create");
        let again = LocalCa::load_or_create(state.path()).expect("load_or_create");
        let loaded = LocalCa::load(state.path()).expect("load");
        assert_eq!(created.cert_pem(), again.cert_pem());
        assert_eq!(created.cert_pem(), loaded.cert_pem());
        assert!(created
            .cert_pem()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(created.cert_path(), state.path().join("ca/ca.pem"));
        assert_eq!(mode(&state.path().join("ca")), 0o700);
        assert_eq!(mode(&state.path().join("ca/ca.key")), 0o600);
        let key = fs::read_to_string(state.path().join("ca/ca.key")).expect("key");
        assert!(
            key.starts_with("-----BEGIN PRIVATE KEY-----"),
            "PKCS#8: {key}"
        );
        // Only ca/ is left behind, no temporary directory.
        let names: Vec<_> = fs::read_dir(state.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["ca"]);
        // The subject carries the hostname.
        let (subject, _) = subject_and_key(&created.inner.cert_der).expect("parse");
        assert_eq!(
            subject.get(&DnType::CommonName),
            Some(&DnValue::Utf8String(format!(
                "interceptor local CA {}",
                crate::audit::hostname()
            )))
        );
    }

    #[test]
    fn load_fails_when_absent() {
        let state = tempfile::tempdir().expect("tempdir");
        let err = format!("{:#}", LocalCa::load(state.path()).expect_err("absent"));
        assert!(
            err.contains("ca/ca.pem") && err.contains("ca export"),
            "{err}"
        );
        // An empty ca/ directory counts as absent for load_or_create.
        fs::create_dir(state.path().join("ca")).expect("mkdir");
        LocalCa::load_or_create(state.path()).expect("created into the empty directory");
    }

    #[test]
    fn damaged_ca_is_an_error_and_kept() {
        let state = tempfile::tempdir().expect("tempdir");
        LocalCa::load_or_create(state.path()).expect("create");
        let pem = state.path().join("ca/ca.pem");
        for junk in [
            "garbage\n",
            "-----BEGIN CERTIFICATE-----\nMIIB\n",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            fs::write(&pem, junk).expect("corrupt");
            let err = format!(
                "{:#}",
                LocalCa::load_or_create(state.path()).expect_err("corrupt")
            );
            assert!(
                err.contains(&pem.display().to_string()) && err.contains("damaged"),
                "{err}"
            );
            assert_eq!(fs::read_to_string(&pem).expect("still there"), junk);
        }

        // A key from another CA is refused too.
        let other = tempfile::tempdir().expect("tempdir");
        let other_ca = LocalCa::load_or_create(other.path()).expect("other");
        fs::write(&pem, other_ca.cert_pem()).expect("swap cert");
        let err = format!("{:#}", LocalCa::load(state.path()).expect_err("mismatch"));
        assert!(err.contains("does not belong"), "{err}");

        // A missing key is named.
        fs::remove_file(state.path().join("ca/ca.key")).expect("rm key");
        let err = format!(
            "{:#}",
            LocalCa::load_or_create(state.path()).expect_err("no key")
        );
        assert!(err.contains("ca/ca.key"), "{err}");
    }

    #[test]
    fn names_are_validated() {
        assert_eq!(
            LeafName::parse("DB.Internal."),
            Some(LeafName::Dns("db.internal".into()))
        );
        assert_eq!(
            LeafName::parse("127.0.0.1"),
            Some(LeafName::Ip([127, 0, 0, 1].into()))
        );
        assert_eq!(
            LeafName::parse("[::1]"),
            Some(LeafName::Ip("::1".parse().expect("ip")))
        );
        let long = format!("{}.example", "a".repeat(250));
        for bad in [
            "",
            ".",
            "a..b",
            "bad name",
            "-x.y",
            "x*.y",
            "ünï.de",
            long.as_str(),
            "a\0b",
        ] {
            assert_eq!(LeafName::parse(bad), None, "{bad:?}");
        }
        let state = tempfile::tempdir().expect("tempdir");
        let ca = LocalCa::load_or_create(state.path()).expect("ca");
        let err = ca
            .server_config("not a name", vec![])
            .expect_err("bad default");
        assert!(err.to_string().contains("not a name"), "{err}");
    }

    #[tokio::test]
    async fn handshake_with_sni_ip_alpn_and_cached_leaves() {
        let state = tempfile::tempdir().expect("tempdir");
        let ca = LocalCa::load_or_create(state.path()).expect("ca");
        let pg = vec![b"postgresql".to_vec()];

        // (a) SNI: the leaf is for the name the client sent, not the default.
        let server = ca
            .server_config("fallback.internal", pg.clone())
            .expect("config");
        let a = handshake(server.clone(), client_trusting(&ca, vec![]), "db.internal")
            .await
            .expect("SNI handshake");
        assert_eq!(a.chain.len(), 2);
        assert_eq!(a.chain[1], ca.inner.cert_der);
        assert_eq!(a.alpn, None);

        // (b) no SNI (IP): the default name's IP SAN.
        let by_ip = ca.server_config("127.0.0.1", vec![]).expect("config");
        handshake(by_ip, client_trusting(&ca, vec![]), "127.0.0.1")
            .await
            .expect("IP handshake");

        // ...and a client dialling 127.0.0.1 rejects the DNS-named default.
        let err = handshake(server.clone(), client_trusting(&ca, vec![]), "127.0.0.1")
            .await
            .err()
            .expect("wrong name must fail");
        assert!(err.to_string().contains("certificate"), "{err}");

        // (c) ALPN.
        let c = handshake(
            server.clone(),
            client_trusting(&ca, pg.clone()),
            "db.internal",
        )
        .await
        .expect("ALPN handshake");
        assert_eq!(c.alpn.as_deref(), Some(&b"postgresql"[..]));

        // (d) The same name reuses one leaf, across configs and clones.
        assert_eq!(a.chain[0], c.chain[0]);
        let other_config = ca
            .clone()
            .server_config("x.internal", vec![])
            .expect("config");
        let d = handshake(other_config, client_trusting(&ca, vec![]), "DB.internal")
            .await
            .expect("handshake");
        assert_eq!(a.chain[0], d.chain[0]);
        let e = handshake(server, client_trusting(&ca, vec![]), "other.internal")
            .await
            .expect("handshake");
        assert_ne!(a.chain[0], e.chain[0]);
    }

    #[test]
    fn leaves_are_renewed_and_bounded() {
        let state = tempfile::tempdir().expect("tempdir");
        let ca = LocalCa::load_or_create(state.path()).expect("ca");
        let name = LeafName::Dns("db.internal".into());
        let first = ca.leaf(&name).expect("mint");
        assert!(Arc::ptr_eq(&first, &ca.leaf(&name).expect("cached")));
        // Due for renewal: minted again.
        ca.inner
            .leaves
            .lock()
            .expect("lock")
            .leaves
            .get_mut(&name)
            .expect("cached")
            .not_after = SystemTime::now() + Duration::from_secs(3600);
        assert!(!Arc::ptr_eq(&first, &ca.leaf(&name).expect("renewed")));

        let now = SystemTime::now();
        let mut cache = LeafCache::new(2);
        for (i, n) in ["a", "b", "c"].into_iter().enumerate() {
            let name = LeafName::Dns(n.into());
            let (key, _) = ca.mint(&name, now).expect("mint");
            cache.insert(
                name,
                key,
                now + LEAF_LIFETIME + Duration::from_secs(i as u64),
                now,
            );
        }
        assert_eq!(cache.leaves.len(), 2);
        assert!(
            cache.get(&LeafName::Dns("a".into()), now).is_none(),
            "oldest evicted"
        );
        assert!(cache.get(&LeafName::Dns("c".into()), now).is_some());
    }

    #[tokio::test]
    async fn upstream_modes() {
        // The "real" store: a server whose certificate is from an unrelated CA.
        let store_state = tempfile::tempdir().expect("tempdir");
        let store_ca = LocalCa::load_or_create(store_state.path()).expect("store CA");
        let store = store_ca
            .server_config("db.internal", vec![])
            .expect("config");
        let stranger_state = tempfile::tempdir().expect("tempdir");
        let stranger = LocalCa::load_or_create(stranger_state.path()).expect("stranger CA");

        let connect = |config: UpstreamTlsConfig, name: &'static str| {
            let store = store.clone();
            async move { handshake(store, config.connector().expect("TLS enabled"), name).await }
        };

        let disabled = UpstreamTlsConfig::new(UpstreamTls::Disable, None, vec![]).expect("disable");
        assert!(disabled.connector().is_none());
        assert_eq!(disabled.mode(), UpstreamTls::Disable);

        // require/prefer: any certificate.
        for mode in [UpstreamTls::Require, UpstreamTls::Prefer] {
            let config = UpstreamTlsConfig::new(mode, None, vec![]).expect("require");
            assert_eq!(config.mode(), mode);
            connect(config, "db.internal")
                .await
                .expect("require connects");
        }
        // require with upstream_ca checks the chain but not the name.
        let config =
            UpstreamTlsConfig::new(UpstreamTls::Require, Some(&store_ca.cert_path()), vec![])
                .expect("require + ca");
        // (Dialling the IP sends no SNI, so the store presents its
        // db.internal certificate, which does not name 127.0.0.1.)
        connect(config, "127.0.0.1")
            .await
            .expect("chain ok, name ignored");
        let config =
            UpstreamTlsConfig::new(UpstreamTls::Require, Some(&stranger.cert_path()), vec![])
                .expect("require + wrong ca");
        connect(config, "db.internal")
            .await
            .err()
            .expect("wrong CA fails");

        // verify-full: right CA and name.
        let config =
            UpstreamTlsConfig::new(UpstreamTls::VerifyFull, Some(&store_ca.cert_path()), vec![])
                .expect("verify-full");
        connect(config.clone(), "db.internal")
            .await
            .expect("verify-full connects");
        let err = connect(config, "127.0.0.1")
            .await
            .err()
            .expect("wrong name fails");
        assert!(err.to_string().contains("not valid for name"), "{err}");
        // A bundle of several CAs, one of them right.
        let bundle = stranger_state.path().join("bundle.pem");
        fs::write(
            &bundle,
            format!("{}{}", stranger.cert_pem(), store_ca.cert_pem()),
        )
        .expect("bundle");
        let config =
            UpstreamTlsConfig::new(UpstreamTls::VerifyFull, Some(&bundle), vec![]).expect("bundle");
        connect(config, "db.internal")
            .await
            .expect("bundle connects");
        // The wrong CA.
        let config =
            UpstreamTlsConfig::new(UpstreamTls::VerifyFull, Some(&stranger.cert_path()), vec![])
                .expect("verify-full");
        let err = connect(config, "db.internal")
            .await
            .err()
            .expect("wrong CA fails");
        assert!(err.to_string().contains("certificate"), "{err}");

        // Files that are missing or not certificates are named.
        let missing = store_state.path().join("nope.pem");
        let err = UpstreamTlsConfig::new(UpstreamTls::VerifyFull, Some(&missing), vec![])
            .expect_err("missing");
        assert!(format!("{err:#}").contains("nope.pem"), "{err:#}");
        let junk = store_state.path().join("junk.pem");
        fs::write(&junk, "not a certificate\n").expect("junk");
        let err =
            UpstreamTlsConfig::new(UpstreamTls::Require, Some(&junk), vec![]).expect_err("junk");
        assert!(
            format!("{err:#}").contains("junk.pem") && err.to_string().contains("no certificate"),
            "{err:#}"
        );
    }

    #[test]
    fn upstream_server_names() {
        assert!(matches!(
            UpstreamTlsConfig::server_name("db.internal"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            UpstreamTlsConfig::server_name("10.0.0.5"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            UpstreamTlsConfig::server_name("[::1]"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(UpstreamTlsConfig::server_name("bad name").is_err());
    }
}
