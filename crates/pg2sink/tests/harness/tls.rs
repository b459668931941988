//! TLS material for the test servers: a test CA and a `localhost`
//! server certificate, generated once with the openssl CLI.

use super::*;

pub(super) struct Tls {
    pub(super) ca_cert: PathBuf,
    pub(super) server_cert: PathBuf,
    pub(super) server_key: PathBuf,
}

/// A test CA and a `localhost` server certificate signed by it, generated
/// once with the openssl CLI into `<base>/tls`. Must hold the global lock.
pub(super) fn ensure_tls(base: &Path) -> Tls {
    let dir = base.join("tls");
    let tls = Tls {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    };
    if tls.ca_cert.exists() && tls.server_cert.exists() && tls.server_key.exists() {
        return tls;
    }
    hlog!("generating test TLS certificates in {}", dir.display());
    let tmp = base.join(format!("tls.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("mkdir {}: {e}", tmp.display()));
    fs::write(
        tmp.join("ca.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n\
         [dn]\nCN = pg2sink test CA\n\
         [v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n",
    )
    .expect("write ca.cnf");
    fs::write(
        tmp.join("server.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\n\
         [dn]\nCN = localhost\n\
         [v3_srv]\nbasicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\nextendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:localhost,IP:127.0.0.1\n\
         subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n",
    )
    .expect("write server.cnf");
    let openssl = |args: &[&str]| {
        run_output(
            Command::new("openssl")
                .args(args)
                .current_dir(&tmp)
                .stdin(Stdio::null()),
        )
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut args = vec!["req", "-x509", "-new", "-nodes"];
    args.extend(ec);
    args.extend([
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-config", "ca.cnf",
    ]);
    openssl(&args);
    let mut args = vec!["req", "-new", "-nodes"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-config",
        "server.cnf",
    ]);
    openssl(&args);
    let serial = format!("0x{:016x}", random_u64() >> 1);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        &serial,
        "-days",
        "3650",
        "-extfile",
        "server.cnf",
        "-extensions",
        "v3_srv",
        "-out",
        "server.crt",
    ]);
    for f in ["ca.crt", "server.crt"] {
        let _ = fs::set_permissions(tmp.join(f), fs::Permissions::from_mode(0o644));
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).unwrap_or_else(|e| panic!("rename to {}: {e}", dir.display()));
    tls
}
