//! TLS to the cluster: a rustls client configuration (ring) from the URL's
//! `tls`, `tls_ca` and `tls_verify_name` options.

use std::sync::Arc;

use emosation_core::ports::StoreError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::config::TlsOptions;

fn tls_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(format!("scylla TLS: {e}"))
}

/// The roots to trust: the CA file's certificates, or the system's.
fn roots(options: &TlsOptions) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    match &options.ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| tls_error(format!("cannot read {}: {e}", path.display())))?
            {
                roots
                    .add(cert.map_err(|e| tls_error(format!("{}: {e}", path.display())))?)
                    .map_err(tls_error)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system store may hold certificates webpki refuses; skip those.
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(tls_error(
            "no CA certificate to trust (tls_ca names an empty file, or the system has none)",
        ));
    }
    Ok(roots)
}

/// The client configuration for `options`.
pub(crate) fn client_config(options: &TlsOptions) -> Result<ClientConfig, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(options)?), Arc::clone(&provider))
        .build()
        .map_err(tls_error)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?;
    let config = if options.verify_name {
        builder.with_webpki_verifier(verifier).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
            .with_no_client_auth()
    };
    Ok(config)
}

/// Verifies the chain to a trusted root, and signatures, but not that the
/// certificate names the address: the driver connects to nodes by IP, and
/// node certificates often name hosts only. rustls checks the chain before
/// the name, so a name error means the chain was valid.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_is_read_and_a_bad_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let options = |ca: &std::path::Path, verify_name| TlsOptions {
            ca: Some(ca.to_owned()),
            verify_name,
        };
        let err = client_config(&options(&empty, true)).unwrap_err();
        assert!(err.to_string().contains("no CA certificate"), "{err}");
        let missing = dir.path().join("missing.pem");
        assert!(client_config(&options(&missing, true)).is_err());
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(client_config(&options(&garbage, false)).is_err(), "not a certificate");
    }

    /// Makes a CA and a node certificate naming `node.scylla.test` only (no
    /// IP address), as many clusters' node certificates are, with openssl.
    fn certificates(
        dir: &std::path::Path,
        ca_name: &str,
    ) -> Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
        let run = |args: &[&str]| {
            std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        let ca_key = format!("{ca_name}-ca.key");
        let ca = format!("{ca_name}-ca.pem");
        let ok = run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca_name} CA"),
        ]) && run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "node.key",
            "-out",
            "node.csr",
            "-subj",
            "/CN=node.scylla.test",
        ]) && std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:node.scylla.test\n").is_ok()
            && run(&[
                "x509",
                "-req",
                "-in",
                "node.csr",
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                "node.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ]);
        ok.then(|| (dir.join(&ca), dir.join("node.pem"), dir.join("node.key")))
    }

    /// A real handshake with a TLS server whose certificate names a host,
    /// reached by IP as the driver reaches nodes: refused when the name is
    /// verified, accepted with `tls_verify_name=false`, and refused either
    /// way when the chain leads to a CA not trusted.
    #[tokio::test]
    async fn the_chain_is_always_verified_the_name_only_when_asked() {
        use rustls::pki_types::PrivateKeyDer;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let dir = tempfile::tempdir().unwrap();
        let Some((ca, cert, key)) = certificates(dir.path(), "cluster") else {
            assert!(
                std::env::var_os("EMOSATION_REQUIRE_TEST_TOOLS").is_none(),
                "the openssl command is needed to make test certificates"
            );
            eprintln!("skipping: the openssl command is not available to make test certificates");
            return;
        };
        let other = tempfile::tempdir().unwrap();
        let (other_ca, _, _) = certificates(other.path(), "other").unwrap();

        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, PrivateKeyDer::from_pem_file(&key).unwrap())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.write_all(b"ok").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        let handshake = |options: TlsOptions| async move {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(&options)?));
            let tcp = tokio::net::TcpStream::connect(addr).await.map_err(tls_error)?;
            // What the driver does: the node's IP as the server name.
            let name = ServerName::IpAddress(addr.ip().into());
            let mut tls = connector.connect(name, tcp).await.map_err(tls_error)?;
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await.map_err(tls_error)?;
            Ok::<_, StoreError>(buf)
        };
        let opts = |ca: &std::path::Path, verify_name| TlsOptions {
            ca: Some(ca.to_owned()),
            verify_name,
        };
        let refused = handshake(opts(&ca, true)).await.unwrap_err();
        assert!(refused.to_string().to_lowercase().contains("name"), "{refused}");
        assert_eq!(handshake(opts(&ca, false)).await.unwrap(), b"ok");
        assert!(handshake(opts(&other_ca, false)).await.is_err(), "an untrusted chain");
        assert!(handshake(opts(&other_ca, true)).await.is_err());
    }
}
