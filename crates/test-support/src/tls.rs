//! Redis over TLS for the tests: certificates made at test time (rcgen), and a redis-server
//! that speaks only TLS (`--port 0 --tls-port …`) and asks every client for a certificate.

use std::path::PathBuf;
use std::sync::OnceLock;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use switchboard_core::LayerConfig;
use switchboard_redis::RedisConfig;

use crate::TempDir;
use crate::redis::fresh_prefix;

/// PEM files in a directory of their own: a CA, a server certificate for 127.0.0.1 and
/// localhost, a client certificate, all signed by the CA, and a second CA that signed none.
pub struct Certs {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().unwrap(); // ok: test harness, a panic fails the calling test
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap(); // ok: test harness, a panic fails the calling test
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem(); // ok: test harness, a panic fails the calling test
    (params, key, pem)
}

impl Certs {
    pub fn make() -> Certs {
        let dir = TempDir::new("tls");
        let file = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap(); // ok: test harness, a panic fails the calling test
            path
        };
        let (ca_params, ca_key, ca_pem) = ca("switchboard test CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |sans: Vec<String>, purpose: ExtendedKeyUsagePurpose, cn: &str| {
            let key = KeyPair::generate().unwrap(); // ok: test harness, a panic fails the calling test
            let mut params = CertificateParams::new(sans).unwrap(); // ok: test harness, a panic fails the calling test
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![purpose];
            let cert = params.signed_by(&key, &issuer).unwrap(); // ok: test harness, a panic fails the calling test
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key_pem) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "redis test server",
        );
        let (client_pem, client_key_pem) = leaf(
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            "switchboard test client",
        );
        let (_, _, other_pem) = ca("a CA nobody trusts");
        Certs {
            ca: file("ca.pem", &ca_pem),
            server_cert: file("server.pem", &server_pem),
            server_key: file("server.key", &server_key_pem),
            client_cert: file("client.pem", &client_pem),
            client_key: file("client.key", &client_key_pem),
            other_ca: file("other-ca.pem", &other_pem),
            dir,
        }
    }
}

/// A redis-server that speaks only TLS and requires a client certificate signed by
/// [`Certs::ca`]. It runs under `sh`, which kills it when the test process's end closes its
/// standard input: a server shared by a whole test binary (see [`shared`]) ends with it.
pub struct TlsRedis {
    pub port: u16,
    pub certs: Certs,
    _child: crate::ChildGuard,
}

impl TlsRedis {
    /// Starts one; `None` (a skip) when there is no redis-server to start.
    pub fn start() -> Option<TlsRedis> {
        let binary = crate::redis::binary();
        if !crate::executable(&binary) {
            return crate::skip(&format!(
                "a redis-server binary to start: {binary} is not there (set \
                 SWITCHBOARD_REDIS_SERVER to its path)"
            ));
        }
        let certs = Certs::make();
        let port = crate::free_port();
        let args = [
            binary,
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--tls-cert-file".into(),
            certs.server_cert.display().to_string(),
            "--tls-key-file".into(),
            certs.server_key.display().to_string(),
            "--tls-ca-cert-file".into(),
            certs.ca.display().to_string(),
            "--tls-auth-clients".into(),
            "yes".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--databases".into(),
            "64".into(),
            "--dir".into(),
            certs.dir.path().display().to_string(),
        ];
        let child = crate::spawn_until_stdin_closes(&args);
        crate::wait_listening_blocking(port);
        Some(TlsRedis {
            port,
            certs,
            _child: child,
        })
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// A layer on this server, on a fresh prefix, trusting the test CA and presenting the
    /// client certificate.
    pub fn config(&self, layer: LayerConfig) -> RedisConfig {
        RedisConfig::new(self.url())
            .prefix(fresh_prefix())
            .layer(layer)
            .tls_ca_file(&self.certs.ca)
            .tls_client_cert(&self.certs.client_cert, &self.certs.client_key)
    }

    /// A plain redis-rs connection with the client certificate, to look at what the layers
    /// store.
    pub async fn raw(&self) -> ::redis::aio::MultiplexedConnection {
        let read = |p: &PathBuf| std::fs::read(p).unwrap(); // ok: test harness, a panic fails the calling test
        ::redis::Client::build_with_tls(
            self.url(),
            ::redis::TlsCertificates {
                client_tls: Some(::redis::ClientTlsConfig {
                    client_cert: read(&self.certs.client_cert),
                    client_key: read(&self.certs.client_key),
                }),
                root_cert: Some(read(&self.certs.ca)),
            },
        )
        .unwrap() // ok: test harness, a panic fails the calling test
        .get_multiplexed_async_connection()
        .await
        .unwrap() // ok: test harness, a panic fails the calling test
    }
}

/// The TLS Redis one test binary shares (started by the first test that asks); `None` (a
/// skip) without a redis-server.
pub fn shared() -> Option<&'static TlsRedis> {
    static SHARED: OnceLock<Option<TlsRedis>> = OnceLock::new();
    match SHARED.get_or_init(TlsRedis::start) {
        Some(r) => Some(r),
        None => crate::skip("a redis-server binary to start"),
    }
}
