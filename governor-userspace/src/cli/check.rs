//! `governor check`: the readiness report for a configuration; exit 1 on any FAIL.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::CheckFormat;
use crate::{config::LoadedConfig, readiness::report};

/// The SSHSIG namespace of a readiness report's signature: a signature made for anything else
/// (a git commit, a file) never verifies as one.
pub const SIGNATURE_NAMESPACE: &str = "governor-readiness";

/// Returns whether the configuration is ready (no FAIL). With `sign`, the report written to
/// `output` is signed with that SSH private key into `<output>.sig`.
pub fn run(
    config: &Path,
    live: bool,
    format: CheckFormat,
    output: Option<&Path>,
    sign: Option<&Path>,
) -> anyhow::Result<bool> {
    if sign.is_some() && output.is_none() {
        anyhow::bail!("--sign signs the report file: give it one with --output FILE");
    }
    let loaded = LoadedConfig::from_file(config)?;
    loaded.compile()?;
    let r = report::build_with(&loaded, live);
    let text = match format {
        CheckFormat::Text => report::text(&r),
        CheckFormat::Markdown => report::markdown(&r),
        CheckFormat::Json => serde_json::to_string_pretty(&r)? + "\n",
    };
    match output {
        Some(path) => {
            std::fs::write(path, &text)
                .map_err(|e| anyhow::anyhow!("cannot write the report to {}: {e}", path.display()))?;
            eprintln!(
                "governor check: {} ({} PASS, {} WARN, {} FAIL); report written to {}",
                if r.ready { "READY" } else { "NOT READY" },
                r.pass,
                r.warn,
                r.fail,
                path.display()
            );
        }
        None => print!("{text}"),
    }
    if let (Some(key), Some(path)) = (sign, output) {
        let sig = sign_report(path, key)?;
        eprintln!("governor check: signed; signature written to {}", sig.display());
    }
    Ok(r.ready)
}

fn signature_path(report: &Path) -> PathBuf {
    let mut p = report.as_os_str().to_owned();
    p.push(".sig");
    PathBuf::from(p)
}

/// Signs `report`'s bytes with the OpenSSH private key at `key`, as `ssh-keygen -Y sign -n
/// governor-readiness` would, into `<report>.sig`.
fn sign_report(report: &Path, key: &Path) -> anyhow::Result<PathBuf> {
    let key = ssh_key::PrivateKey::read_openssh_file(key)
        .with_context(|| format!("cannot read the OpenSSH private key {} (--sign)", key.display()))?;
    if key.is_encrypted() {
        anyhow::bail!(
            "the key is protected by a passphrase, which governor does not ask for: sign the report with \
             `ssh-keygen -Y sign -n {SIGNATURE_NAMESPACE} -f KEY REPORT` instead (governor check --verify accepts it)"
        );
    }
    let message = std::fs::read(report).with_context(|| format!("cannot read {}", report.display()))?;
    let signature = key
        .sign(SIGNATURE_NAMESPACE, ssh_key::HashAlg::Sha512, &message)
        .map_err(|e| anyhow::anyhow!("cannot sign with this key ({e}); use an ed25519 key"))?;
    let pem =
        signature.to_pem(ssh_key::LineEnding::LF).map_err(|e| anyhow::anyhow!("cannot encode the signature: {e}"))?;
    let path = signature_path(report);
    std::fs::write(&path, pem).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Checks a signed readiness report: its signature (`<report>.sig`) against the public key at
/// `key`, and, with `config`, that the report was made for the configuration this host has now.
/// Prints what it found; an error says which check failed.
pub fn verify(report: &Path, key: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    let public = ssh_key::PublicKey::read_openssh_file(key)
        .with_context(|| format!("cannot read the OpenSSH public key {} (--key)", key.display()))?;
    let message = std::fs::read(report).with_context(|| format!("cannot read the report {}", report.display()))?;
    let sig_path = signature_path(report);
    let pem = std::fs::read_to_string(&sig_path).with_context(|| {
        format!("cannot read the signature {} (made by --sign or ssh-keygen -Y sign)", sig_path.display())
    })?;
    let signature = ssh_key::SshSig::from_pem(pem)
        .map_err(|e| anyhow::anyhow!("{} is not an SSH signature: {e}", sig_path.display()))?;
    public.verify(SIGNATURE_NAMESPACE, &message, &signature).map_err(|_| {
        anyhow::anyhow!(
            "the signature of {} does not verify with {}: the report changed after it was signed, or another key signed it",
            report.display(),
            key.display()
        )
    })?;
    println!(
        "{}: signature good, by {} ({})",
        report.display(),
        public.fingerprint(ssh_key::HashAlg::Sha256),
        SIGNATURE_NAMESPACE
    );
    let text = String::from_utf8_lossy(&message);
    let Some((signed, ready)) = report_facts(&text) else {
        anyhow::bail!(
            "{} is not a governor readiness report (no config sha256 or verdict where one belongs)",
            report.display()
        );
    };
    println!(
        "{}: the signed report says {}",
        report.display(),
        if ready { "READY" } else { "NOT READY: the configuration has a FAIL" }
    );
    match config {
        Some(path) => {
            let here = LoadedConfig::from_file(path)?.sha256();
            if here != signed {
                anyhow::bail!(
                    "the report was made for config sha256 {signed}, and {} has sha256 {here} on this host: the \
                     configuration changed since the report was signed; run governor check again",
                    path.display()
                );
            }
            println!("{}: sha256 {here}, as in the signed report", path.display());
        }
        None => println!("config sha256 in the report: {signed} (give --config to compare it with this host's)"),
    }
    Ok(())
}

/// The config's sha256 and the verdict as the report states them, read from their own places
/// in each format (JSON fields; Markdown's `| sha256 |` row and bold verdict; the text's first
/// two lines), never from text a config path could carry.
fn report_facts(text: &str) -> Option<(String, bool)> {
    let hex = |s: &str| {
        let h: String = s.chars().take_while(char::is_ascii_hexdigit).collect();
        (h.len() == 64).then_some(h)
    };
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        return Some((hex(v["config_sha256"].as_str()?)?, v["ready"].as_bool()?));
    }
    if text.starts_with("# governor readiness report") {
        let sha = text.lines().find_map(|l| l.strip_prefix("| sha256 | `")).and_then(hex)?;
        let ready = text.lines().find(|l| l.starts_with("**"))?.starts_with("**READY**");
        return Some((sha, ready));
    }
    let mut lines = text.lines();
    let ready = lines.next()?.split("readiness: ").nth(1)?.starts_with("READY");
    let second = lines.next()?;
    let sha = hex(&second[second.rfind("(sha256 ")? + "(sha256 ".len()..])?;
    Some((sha, ready))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_facts_are_read_from_their_places_in_every_format() {
        let h = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
        let decoy = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
        for (text, ready) in [
            (
                format!(
                    "governor 0.1.0 readiness: NOT READY (1 PASS, 0 WARN, 1 FAIL)\nconfig /x (sha256 {decoy})/c.toml (sha256 {h}), host h, kernel k, t\n"
                ),
                false,
            ),
            (
                format!(
                    "# governor readiness report\n\n**READY**: 3 PASS\n\n| config | `/x sha256 {decoy}` |\n| sha256 | `{h}` |\n"
                ),
                true,
            ),
            (format!("{{\"config\": \"sha256 {decoy}\", \"config_sha256\": \"{h}\", \"ready\": true}}"), true),
        ] {
            assert_eq!(super::report_facts(&text), Some((h.to_owned(), ready)), "{text}");
        }
        assert_eq!(super::report_facts("sha256 abc"), None);
    }
}
