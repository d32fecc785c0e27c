//! The federation listener's TLS certificate: from `[federation] tls_certificate` and
//! `tls_private_key`, or, when neither is set, a self-signed one for the server name made on
//! first start and kept in the database (so it stays the same across restarts).

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::{
    error::{Error, Result},
    server::Server,
};

const CERT_KEY: &[u8] = b"federation_tls_certificate";
const KEY_KEY: &[u8] = b"federation_tls_private_key";

/// The rustls configuration of the federation listener.
pub fn server_config(server: &Server) -> Result<Arc<rustls::ServerConfig>> {
    let (cert_pem, key_pem) = match (
        &server.config.federation.tls_certificate,
        &server.config.federation.tls_private_key,
    ) {
        (Some(cert), Some(key)) => (read(cert)?, read(key)?),
        _ => self_signed(server)?,
    };
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::internal(format_args!("federation TLS certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::internal(
            "federation TLS certificate: no certificate",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| Error::internal(format_args!("federation TLS private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format_args!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::internal(format_args!("federation TLS: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::internal(format_args!("{}: {e}", path.display())))
}

/// The stored self-signed certificate, made on first use.
fn self_signed(server: &Server) -> Result<(Vec<u8>, Vec<u8>)> {
    let maps = &server.maps;
    if let (Some(cert), Some(key)) = (maps.global.get(CERT_KEY)?, maps.global.get(KEY_KEY)?) {
        return Ok((cert, key));
    }
    let name = server.server_name();
    let host = sparks_federation::discovery::Name::parse(name.as_str())
        .map_or_else(|| name.to_string(), |n| n.host);
    let mut names = vec![host];
    if !names.iter().any(|n| n == "localhost") {
        names.push("localhost".to_owned());
    }
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| Error::internal(format_args!("self-signed certificate: {e}")))?;
    let cert = certified.cert.pem().into_bytes();
    let key = certified.signing_key.serialize_pem().into_bytes();
    let mut batch = server.db.batch();
    batch.put(&maps.global, CERT_KEY, &cert);
    batch.put(&maps.global, KEY_KEY, &key);
    server.db.commit(batch)?;
    tracing::info!("generated a self-signed TLS certificate for federation");
    Ok((cert, key))
}
