//! `berth user add|remove|list` as a user runs them: the binary writes an htpasswd file that
//! Apache's `htpasswd -v` accepts, lists it, and removes users.

mod support;

use std::path::Path;
use std::process::Command;

fn berth(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    support::run_berth(args, stdin.unwrap_or(""))
}

/// Apache's `htpasswd -vb`: `None` when it is not installed (skipped), except on CI, where that
/// fails the test instead of silently checking nothing.
fn apache_verify(file: &Path, user: &str, password: &str) -> Option<bool> {
    match Command::new("htpasswd").arg("-vb").arg(file).args([user, password]).output() {
        Ok(out) => Some(out.status.success()),
        Err(_) => {
            assert!(std::env::var_os("CI").is_none(), "CI is set but `htpasswd` is not installed (Debian: apt-get install apache2-utils)");
            eprintln!("skipping the htpasswd -v checks: `htpasswd` not installed (apache2-utils)");
            None
        }
    }
}

#[test]
fn add_list_verify_remove() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("htpasswd");
    let f = file.to_str().expect("utf-8 path");

    let (ok, _, err) = berth(&["user", "add", "alice", "--file", f, "--password-stdin", "--cost", "5"], Some("correct horse\n"));
    assert!(ok, "{err}");
    assert!(err.contains("added user alice"), "{err}");
    let (ok, _, err) = berth(&["user", "add", "bob", "--file", f, "--password-stdin"], Some("battery staple\r\n"));
    assert!(ok, "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file).expect("stat").permissions().mode() & 0o777, 0o600);
    }
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.starts_with("alice:$2y$05$") && text.contains("\nbob:$2y$10$"), "{text}");

    let (ok, out, err) = berth(&["user", "list", "--file", f], None);
    assert!(ok, "{err}");
    assert_eq!(out, "alice\nbob\n");

    if let Some(v) = apache_verify(&file, "alice", "correct horse") {
        assert!(v, "htpasswd -v refused alice's password");
        assert_eq!(apache_verify(&file, "bob", "battery staple"), Some(true), "the \\r\\n is not part of the password");
        assert_eq!(apache_verify(&file, "alice", "wrong"), Some(false));
    }

    // Setting the password again replaces it.
    let (ok, _, err) = berth(&["user", "add", "alice", "--file", f, "--password-stdin", "--cost", "4"], Some("new one\n"));
    assert!(ok && err.contains("updated the password of user alice"), "{err}");
    if apache_verify(&file, "alice", "new one").is_some() {
        assert_eq!(apache_verify(&file, "alice", "correct horse"), Some(false));
        assert_eq!(apache_verify(&file, "alice", "new one"), Some(true));
    }

    let (ok, _, err) = berth(&["user", "remove", "alice", "--file", f], None);
    assert!(ok && err.contains("removed user alice"), "{err}");
    let (ok, out, _) = berth(&["user", "list", "--file", f], None);
    assert!(ok);
    assert_eq!(out, "bob\n");
    let (ok, _, err) = berth(&["user", "remove", "alice", "--file", f], None);
    assert!(!ok && err.contains("no user \"alice\""), "{err}");
}

#[test]
fn refuses_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("htpasswd");
    let f = file.to_str().expect("utf-8 path");
    let (ok, _, err) = berth(&["user", "add", "a:b", "--file", f, "--password-stdin"], Some("pw\n"));
    assert!(!ok && err.contains("invalid user name"), "{err}");
    let (ok, _, err) = berth(&["user", "add", "alice", "--file", f, "--password-stdin"], Some("\n"));
    assert!(!ok && err.contains("no password"), "{err}");
    // Without --password-stdin and without a terminal there is nobody to ask.
    let (ok, _, err) = berth(&["user", "add", "alice", "--file", f], Some("pw\n"));
    assert!(!ok && err.contains("--password-stdin"), "{err}");
    let (ok, _, err) = berth(&["user", "add", "alice", "--file", f, "--password-stdin", "--cost", "3"], Some("pw\n"));
    assert!(!ok && err.contains("--cost"), "{err}");
    assert!(!file.exists(), "nothing was written");
    let (ok, _, err) = berth(&["user", "list", "--file", f], None);
    assert!(!ok && err.contains("htpasswd"), "{err}");
    // A file with a non-bcrypt hash is refused, naming the line, and left alone.
    std::fs::write(&file, "# users\nold:$apr1$salt$hash\n").expect("write");
    let (ok, _, err) = berth(&["user", "add", "alice", "--file", f, "--password-stdin"], Some("pw\n"));
    assert!(!ok && err.contains("line 2 (user \"old\")"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "# users\nold:$apr1$salt$hash\n");
}

#[test]
fn the_file_defaults_to_the_one_berth_serve_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let d = data.to_str().expect("utf-8 path");
    // No --file: <data_dir>/htpasswd, created with its directory.
    let (ok, _, err) = berth(&["user", "add", "alice", "--data-dir", d, "--password-stdin", "--cost", "4"], Some("pw\n"));
    assert!(ok, "{err}");
    assert!(data.join("htpasswd").is_file(), "{err}");
    // With a configuration: its auth.htpasswd.
    let other = dir.path().join("users.htpasswd");
    let cfg = dir.path().join("berth.yaml");
    std::fs::write(&cfg, format!("data_dir: {d}\nauth:\n  mode: basic\n  htpasswd: {}\n", other.display())).expect("config");
    let c = cfg.to_str().expect("utf-8 path");
    let (ok, _, err) = berth(&["user", "add", "bob", "--config", c, "--password-stdin", "--cost", "4"], Some("pw\n"));
    assert!(ok, "{err}");
    let (ok, out, err) = berth(&["user", "list", "--config", c], None);
    assert!(ok, "{err}");
    assert_eq!(out, "bob\n");
    let (ok, out, _) = berth(&["user", "list", "--data-dir", d], None);
    assert!(ok);
    assert_eq!(out, "alice\n");
    // --file and --config together are a mistake, said so.
    let (ok, _, err) = berth(&["user", "list", "--file", "x", "--config", c], None);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}
