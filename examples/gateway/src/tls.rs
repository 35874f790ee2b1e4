//! TLS with rustls: the proxy listener terminates it (`"tls": { "cert": "…", "key": "…" }`,
//! PEM files, read again on every reload, ALPN `h2` and `http/1.1`), and pools reach
//! `https://` nodes with it (the system's roots, or a pool's own `tls.ca`; SNI and the
//! checked name are the node URL's host).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;

/// A request that came over the TLS listener (a request extension): its forwarding headers
/// say `https`.
#[derive(Clone, Copy, Debug)]
pub struct ViaTls;

/// The proxy listener's certificate (`tls` in the gateway's file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// A PEM file: the certificate, then its chain.
    pub cert: PathBuf,
    /// A PEM file: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The listener's TLS acceptor, replaced whole when the certificate files are read again.
pub struct Acceptor {
    files: ListenerTls,
    current: ArcSwap<TlsAcceptor>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    /// Reads the certificate and key: an error names the file and what is wrong with it.
    pub fn new(files: &ListenerTls) -> Result<Self, String> {
        Ok(Acceptor {
            current: ArcSwap::from_pointee(acceptor(files)?),
            files: files.clone(),
        })
    }

    /// The acceptor for a new connection.
    pub fn get(&self) -> Arc<TlsAcceptor> {
        self.current.load_full()
    }

    /// Reads the files again (a renewed certificate), without using them yet.
    pub fn read(&self) -> Result<TlsAcceptor, String> {
        acceptor(&self.files)
    }

    /// Uses what [`read`](Self::read) read, from the next connection on.
    pub fn store(&self, acceptor: TlsAcceptor) {
        self.current.store(Arc::new(acceptor));
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn acceptor(files: &ListenerTls) -> Result<TlsAcceptor, String> {
    let certs = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: no private key: {e}", files.key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// A client configuration for `https://` nodes: the certificates in `ca`, or the system's
/// roots. (ALPN is the connector's: `h2` for HTTP/2 pools, `http/1.1` otherwise.)
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(
                    "no system root certificates were found: give the pool a tls.ca".into(),
                );
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
