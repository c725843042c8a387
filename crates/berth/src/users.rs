//! `berth user add|remove|list`: manage the htpasswd file of password logins. The file format,
//! hashing and the atomic save are `auth::Htpasswd`'s; this module owns the flags, reading the
//! password (terminal prompt with echo off, or one line of stdin) and the messages. A running
//! server re-reads the file within a second, so no restart is needed.

use std::io::{BufRead as _, IsTerminal as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use auth::Htpasswd;

#[derive(clap::Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user, or set the password of an existing one (asked twice on a terminal).
    Add {
        /// The user name (no ':', whitespace or control characters).
        name: String,
        #[command(flatten)]
        file: FileArgs,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        /// bcrypt cost: each step doubles the time a password check takes (4 to 31).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
        cost: u32,
    },
    /// Remove a user.
    Remove {
        name: String,
        #[command(flatten)]
        file: FileArgs,
    },
    /// List the users, one per line.
    List {
        #[command(flatten)]
        file: FileArgs,
    },
}

/// Which htpasswd file: `--file`, else the configuration's `auth.htpasswd` (whose default is
/// `<data_dir>/htpasswd`, the file `berth serve` reads with the same flags).
#[derive(clap::Args)]
pub(crate) struct FileArgs {
    /// The htpasswd file (created by `add` if missing).
    #[arg(long, conflicts_with_all = ["config", "data_dir"])]
    file: Option<PathBuf>,
    /// Take the file from this configuration's `auth.htpasswd`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The data directory (`<data_dir>/htpasswd` unless the configuration names a file).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl FileArgs {
    fn resolve(self) -> anyhow::Result<PathBuf> {
        if let Some(f) = self.file {
            return Ok(f);
        }
        let overrides = crate::config::Overrides { listen: None, data_dir: self.data_dir };
        let cfg = crate::config::load(self.config.as_deref(), crate::env_vars(), &overrides)?;
        Ok(cfg.auth.htpasswd)
    }
}

pub(crate) fn main(command: UserCommand) -> ExitCode {
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth user: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add { name, file, password_stdin, cost } => {
            let file = file.resolve()?;
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let password = if password_stdin { password_from_stdin()? } else { password_from_terminal()? };
            let _lock = lock(&file)?;
            let mut users = if file.exists() { Htpasswd::load(&file)? } else { Htpasswd::default() };
            let existed = users.contains(&name);
            users.set(&name, &password, cost)?;
            users.save(&file).with_context(|| format!("writing {}", file.display()))?;
            eprintln!("{} user {name} in {}", if existed { "updated the password of" } else { "added" }, file.display());
        }
        UserCommand::Remove { name, file } => {
            let file = file.resolve()?;
            let _lock = lock(&file)?;
            let mut users = Htpasswd::load(&file)?;
            if !users.remove(&name) {
                bail!("no user {name:?} in {}", file.display());
            }
            users.save(&file).with_context(|| format!("writing {}", file.display()))?;
            eprintln!("removed user {name} from {}", file.display());
        }
        UserCommand::List { file } => {
            let file = file.resolve()?;
            for user in Htpasswd::load(&file)?.users() {
                println!("{user}");
            }
        }
    }
    Ok(())
}

/// One line of standard input, without its line ending (also `berth gc --password-stdin`).
pub(crate) fn password_from_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the password from standard input")?;
    let password = line.strip_suffix('\n').map_or(line.as_str(), |l| l.strip_suffix('\r').unwrap_or(l));
    if password.is_empty() {
        bail!("no password on standard input");
    }
    Ok(password.to_owned())
}

fn password_from_terminal() -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("standard input is not a terminal: pass the password with --password-stdin");
    }
    let first = rpassword::prompt_password("Password: ").context("reading the password")?;
    if first.is_empty() {
        bail!("the password is empty");
    }
    let second = rpassword::prompt_password("Password again: ").context("reading the password")?;
    if first != second {
        bail!("the passwords do not match");
    }
    Ok(first)
}

/// Serializes `berth user` runs on one file (read, change, write back), so two at once do not
/// lose one's change. The lock is on a file beside it because the htpasswd file itself is
/// replaced by a rename on every save.
fn lock(file: &Path) -> anyhow::Result<std::fs::File> {
    let name = file.file_name().with_context(|| format!("{}: not a file name", file.display()))?;
    let path = file.with_file_name(format!(".{}.lock", name.to_string_lossy()));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    f.lock().with_context(|| format!("locking {}", path.display()))?;
    Ok(f)
}
