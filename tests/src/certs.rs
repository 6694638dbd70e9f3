//! Certificates for TLS tests, made with the openssl CLI (one issuer for the PostgreSQL and the
//! store-node TLS tests).

use std::path::Path;
use std::process::Command;

/// Runs `cmd`, panicking with its output when it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA (`name.crt`, `name.key`) in `dir`.
pub fn make_ca(dir: &Path, name: &str) {
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN=allsource-{name}")])
        .args([
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ]));
}

/// A certificate with CN `cn` and the X.509 extensions `ext` (openssl extfile lines), issued by
/// the CA `ca` of `dir`, valid `days`, with `serial` (`<out>.crt`, `<out>.key` in `dir`).
pub fn issue_cert(dir: &Path, ca: &str, cn: &str, out: &str, ext: &str, serial: u32, days: u32) {
    let ext_file = format!("{out}.ext");
    std::fs::write(dir.join(&ext_file), ext).unwrap_or_else(|e| panic!("write {ext_file}: {e}"));
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-subj", &format!("/CN={cn}")])
        .args([
            "-keyout",
            &format!("{out}.key"),
            "-out",
            &format!("{out}.csr"),
        ]));
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["x509", "-req", "-in", &format!("{out}.csr")])
        .args(["-CA", &format!("{ca}.crt"), "-CAkey", &format!("{ca}.key")])
        .args([
            "-set_serial",
            &serial.to_string(),
            "-days",
            &days.to_string(),
        ])
        .args(["-extfile", &ext_file, "-out", &format!("{out}.crt")]));
}

/// A server certificate for the subject alternative names `sans` (e.g.
/// `DNS:localhost,IP:127.0.0.1`) issued by the CA `ca` of `dir`, valid `days`, with `serial`
/// (`<out>.crt`, `<out>.key` in `dir`).
pub fn issue_server_cert(dir: &Path, ca: &str, out: &str, sans: &str, serial: u32, days: u32) {
    let ext = format!(
        "subjectAltName={sans}\nextendedKeyUsage=serverAuth\n\
         basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    );
    issue_cert(dir, ca, out, out, &ext, serial, days);
}
