//! Certificates for TLS tests, made with rcgen: a CA, server certificates for chosen
//! names, client certificates, written as PEM files memcached's `-Z -o
//! ssl_chain_cert=...,ssl_key=...` reads. Debian's memcached 1.6.18 links OpenSSL and
//! serves TLS with those options.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};

use super::memcached::Memcached;

/// A certificate authority that signs server and client certificates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, as PEM.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The certificate chain (leaf only: the CA is the trust root).
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl Ca {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca { cert, key }
    }

    /// The CA certificate (the root clients trust), as PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Identity {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).expect("leaf params");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the leaf");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// PEM files in a temporary directory, removed on drop.
pub struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    /// Writes the server's `identity` and, for client verification, the `client_ca`.
    pub fn write(identity: &Identity, client_ca: Option<&Ca>) -> TlsFiles {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("memkeep-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the TLS directory");
        std::fs::write(dir.join("cert.pem"), &identity.cert_pem).expect("write cert.pem");
        std::fs::write(dir.join("key.pem"), &identity.key_pem).expect("write key.pem");
        if let Some(ca) = client_ca {
            std::fs::write(dir.join("client-ca.pem"), ca.pem()).expect("write client-ca.pem");
        }
        TlsFiles { dir }
    }

    fn path(&self, name: &str) -> String {
        path_str(&self.dir.join(name))
    }

    /// memcached's TLS options: `-Z -o ssl_chain_cert=...,ssl_key=...`, plus
    /// `ssl_verify_mode=2,ssl_ca_cert=...` (require a client certificate) when a client CA
    /// was written.
    pub fn server_args(&self) -> Vec<String> {
        let mut options = format!(
            "ssl_chain_cert={},ssl_key={}",
            self.path("cert.pem"),
            self.path("key.pem")
        );
        if self.dir.join("client-ca.pem").exists() {
            options.push_str(&format!(
                ",ssl_verify_mode=2,ssl_ca_cert={}",
                self.path("client-ca.pem")
            ));
        }
        vec!["-Z".to_string(), "-o".to_string(), options]
    }

    /// Starts a TLS memcached with these files.
    pub fn start(&self) -> Memcached {
        let args = self.server_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Memcached::start_with(&args)
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("a UTF-8 temp path").to_string()
}
