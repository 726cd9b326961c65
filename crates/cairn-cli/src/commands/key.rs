//! `cairn key`: list, add, remove, passwd.

use super::*;

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// List key files
    List,
    /// Add a key file for a new password
    Add {
        /// File holding the new password (else prompt)
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Remove a key file
    Remove {
        /// Key id (or unique prefix)
        id: String,
    },
    /// Change the password of the key in use
    Passwd {
        /// File holding the new password (else prompt)
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        #[command(flatten)]
        kdf: KdfArgs,
    },
}

pub(crate) fn new_password(f: &Option<PathBuf>) -> Result<Vec<u8>> {
    match f {
        Some(p) => {
            let mut s = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            while matches!(s.last(), Some(b'\n') | Some(b'\r')) {
                s.pop();
            }
            if s.is_empty() {
                bail!("the new password is empty");
            }
            Ok(s)
        }
        None => crate::util::prompt_password("enter the new password: ", true),
    }
}

pub fn key(g: &GlobalArgs, cmd: KeyCmd) -> Result<i32> {
    let repo = open(g)?;
    match cmd {
        KeyCmd::List => {
            let keys = repo.list_keys()?;
            if g.json {
                print_json(&Value::Array(
                    keys.iter()
                        .map(|k| json!({"id": k.id.to_hex(), "current": k.id == *repo.key_id(), "created": format_time(k.created * 1_000_000_000, true), "hostname": k.hostname, "username": k.username}))
                        .collect(),
                ))?;
            } else {
                for k in keys {
                    println!(
                        "{} {}  {}  {}@{}",
                        if k.id == *repo.key_id() { "*" } else { " " },
                        k.id.short(),
                        format_time(k.created * 1_000_000_000, false),
                        k.username,
                        k.hostname
                    );
                }
            }
        }
        KeyCmd::Add {
            new_password_file,
            kdf,
        } => {
            let kdf = kdf.params()?;
            let pw = new_password(&new_password_file)?;
            let id = repo.add_key(&pw, kdf)?;
            println!("added key {}", id.short());
        }
        KeyCmd::Remove { id } => {
            let keys = repo.list_keys()?;
            let m: Vec<_> = keys
                .iter()
                .filter(|k| k.id.to_hex().starts_with(&id.to_ascii_lowercase()))
                .collect();
            if m.len() != 1 {
                bail!("{} keys match {id:?}", m.len());
            }
            repo.remove_key(&m[0].id)?;
            println!("removed key {}", m[0].id.short());
        }
        KeyCmd::Passwd {
            new_password_file,
            kdf,
        } => {
            let kdf = kdf.params()?;
            let pw = new_password(&new_password_file)?;
            let id = repo.add_key(&pw, kdf)?;
            // The new key is durable before the old one goes.
            repo.store().delete(&store::key_path(repo.key_id()))?;
            println!(
                "password changed: key {} replaces {}",
                id.short(),
                repo.key_id().short()
            );
        }
    }
    Ok(0)
}
