//! Certificates for the TLS tests, made by the `openssl` command line: private authorities, server and
//! client certificates in a temporary directory.

use std::path::PathBuf;
use std::process::Command;

/// A certificate authority, a server certificate for `localhost` only (not 127.0.0.1), a client
/// certificate for the role `certuser`, and an unrelated authority.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    // Not `Default`: making it runs openssl, which a default value should not hide.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.authority("ca");
        pki.authority("other-ca");
        pki.leaf(
            "server",
            "localhost",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        );
        pki.leaf(
            "client",
            "certuser",
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        );
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    fn authority(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=sluice test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ]);
    }

    /// A certificate signed by the authority `ca`.
    pub fn leaf(&self, name: &str, common_name: &str, extensions: &str) {
        self.leaf_signed_by("ca", name, common_name, extensions)
    }

    /// A certificate and its key, `<name>.crt` and `<name>.key`, signed by the authority `signer`.
    pub fn leaf_signed_by(&self, signer: &str, name: &str, common_name: &str, extensions: &str) {
        std::fs::write(self.path(&format!("{name}.ext")), extensions).unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={common_name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{signer}.crt"),
            "-CAkey",
            &format!("{signer}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
