//! HTTPS and WSS on every listener: rustls (ring, like the rest of the
//! workspace) with a certificate chain and private key read from PEM files.
//!
//! The pair is held by a [`ResolvesServerCert`] of our own, so
//! [`Tls::reload`] (the binary calls it on SIGHUP) swaps it for the files'
//! current content without touching open connections: a connection keeps
//! the keys it was handshaken with, and every handshake after the reload
//! gets the new certificate. A reload that fails (a missing file, a key that
//! does not match its certificate) changes nothing and says why.
//!
//! [`bridge`] hands a WebSocket over TLS to code that writes to a plain
//! socket (the fan-out's inline, non-blocking writes, see
//! `ws-fanout/src/socket`): it returns one end of a socket pair and copies
//! between the other end and the TLS stream in a task of its own.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpStream, UnixStream};
use tracing::debug;

/// A connection this server accepted over TLS, as the HTTP server hands it
/// to whoever takes it over after an upgrade.
pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain {}: {message}", path.display())]
    Certificate { path: PathBuf, message: String },
    #[error("{} holds no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("cannot read the private key {}: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("the private key {} does not fit the certificate {}: {message}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Where the certificate chain and the private key are (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The TLS side of the listeners: one configuration shared by every
/// connection, whose certificate [`Tls::reload`] replaces.
#[derive(Clone)]
pub struct Tls {
    files: TlsFiles,
    certs: Arc<CurrentCert>,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

/// The certificate served to new handshakes.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner())))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks the pair: a chain of at least one certificate, a key
/// the provider can sign with, and that key the certificate's.
fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_error = |e: &dyn std::fmt::Display| TlsError::Certificate {
        path: files.cert.clone(),
        message: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_error(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(&e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(files.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        message: e.to_string(),
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        message: e.to_string(),
    })?;
    Ok(Arc::new(certified))
}

impl Tls {
    /// Reads the certificate chain and key, and builds the configuration
    /// every listener of the process shares (TLS 1.2 and 1.3, HTTP/1.1).
    pub fn new(files: TlsFiles) -> Result<Tls, TlsError> {
        let provider = provider();
        let certs = Arc::new(CurrentCert(RwLock::new(load(&files, &provider)?)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certs) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            files,
            certs,
            config: Arc::new(config),
        })
    }

    /// Reads the files again and serves their pair to every handshake from
    /// now on; open connections keep theirs. On an error nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load(&self.files, self.config.crypto_provider())?;
        *self.certs.0.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config))
    }
}

/// Bytes buffered per direction between a TLS stream and its socket pair.
const BRIDGE_BUFFER: usize = 4096;

/// One end of a socket pair whose other end is copied to and from `tls`
/// by a task of its own, until either side closes: whoever writes to the
/// returned socket writes, encrypted, to the client; what the client sends
/// is read from it decrypted. The kernel's socket buffers make writes to it
/// non-blocking exactly as to a TCP socket, which is what the fan-out's
/// inline writes need; the cost is the task, its two buffers, and two more
/// file descriptors while the connection lives.
pub fn bridge(tls: TlsStream) -> std::io::Result<UnixStream> {
    let (ours, theirs) = UnixStream::pair()?;
    tokio::spawn(async move {
        let mut tls = tls;
        let mut ours = ours;
        match tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut ours, BRIDGE_BUFFER, BRIDGE_BUFFER).await {
            Ok(_) => {}
            Err(e) => debug!(error = %e, "TLS bridge ended with an error"),
        }
    });
    Ok(theirs)
}

/// The router of `--redirect-http`: every request, whatever its method and
/// path, is answered `308 Permanent Redirect` to the same path and query on
/// `https://` at the request's host and `https_port` (left out when 443).
/// A request without a usable `Host` is `400 invalid_request`.
pub fn redirect(https_port: u16) -> axum::Router {
    use axum::http::{StatusCode, header, uri::Authority};
    use axum::response::IntoResponse;

    let answer = move |req: axum::extract::Request| async move {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<Authority>().ok())
            .filter(|a| !a.host().is_empty() && a.as_str().find('@').is_none());
        let Some(host) = host else {
            return crate::ApiError::invalid_request("a Host header naming this server is needed to redirect to HTTPS")
                .into_response();
        };
        let port = if https_port == 443 {
            String::new()
        } else {
            format!(":{https_port}")
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{}{port}{path}", host.host());
        (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response()
    };
    axum::Router::new().fallback(answer)
}
