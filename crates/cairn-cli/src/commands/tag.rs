//! `cairn tag`: add, remove, protect, unprotect.

use anyhow::{Result, bail};
use cairn_repo::forget::PROTECTED_TAG;
use clap::Args;
use serde_json::json;

use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct TagArgs {
    /// Snapshots (id, id prefix or latest)
    #[arg(required = true)]
    ids: Vec<String>,
    /// Add a tag (repeatable)
    #[arg(long)]
    add: Vec<String>,
    /// Remove a tag (repeatable)
    #[arg(long)]
    remove: Vec<String>,
    /// Protect from forget
    #[arg(long, conflicts_with = "unprotect")]
    protect: bool,
    /// Remove the protection
    #[arg(long)]
    unprotect: bool,
    #[command(flatten)]
    pick: crate::commands::Pick,
}

pub fn tag_cmd(g: &GlobalArgs, a: TagArgs) -> Result<i32> {
    let repo = crate::commands::open(g)?;
    let mut add = a.add.clone();
    let mut remove = a.remove.clone();
    if a.protect {
        add.push(PROTECTED_TAG.into());
    }
    if a.unprotect {
        remove.push(PROTECTED_TAG.into());
    }
    if add.is_empty() && remove.is_empty() {
        bail!("nothing to do: give --add, --remove, --protect or --unprotect");
    }
    for (id, _) in crate::commands::resolve_all(&repo, &a.ids, &a.pick)? {
        let new = repo.retag(&id, &add, &remove)?;
        if g.json {
            println!("{}", json!({"old": id.to_hex(), "new": new.to_hex()}));
        } else {
            println!("snapshot {} is now {}", id.short(), new.short());
        }
    }
    Ok(0)
}
