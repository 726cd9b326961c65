//! `cairn stats` and `cairn cat`.

use super::*;

pub fn stats(g: &GlobalArgs) -> Result<i32> {
    let repo = open_indexed(g)?;
    let snaps = repo.repo().list_snapshots()?;
    let all = repo.repo().store().list("")?;
    let total_bytes: u64 = all.iter().map(|o| o.1).sum();
    let idx = repo.index();
    let mut raw = 0u64;
    let mut stored = 0u64;
    for kind in [BlobKind::Data, BlobKind::Tree] {
        for (_, loc) in idx.iter(kind) {
            raw += loc.raw_len as u64;
            stored += loc.length as u64;
        }
    }
    let logical: u64 = snaps.iter().map(|s| s.1.summary.bytes_total).sum();
    let v = json!({
        "snapshots": snaps.len(),
        "packs": idx.packs.len(),
        "index_objects": idx.index_ids.len(),
        "data_blobs": idx.len(BlobKind::Data),
        "tree_blobs": idx.len(BlobKind::Tree),
        "repository_bytes": total_bytes,
        "unique_raw_bytes": raw,
        "stored_blob_bytes": stored,
        "snapshots_logical_bytes": logical,
        "compression_ratio": if stored > 0 { raw as f64 / stored as f64 } else { 0.0 },
        "dedup_ratio": if raw > 0 { logical as f64 / raw as f64 } else { 0.0 },
        "index_bytes_per_blob": idx.bytes_per_blob(),
    });
    if g.json {
        print_json(&v)?;
    } else {
        println!("snapshots:             {}", snaps.len());
        println!("packs:                 {}", idx.packs.len());
        println!(
            "blobs:                 {} data, {} tree",
            idx.len(BlobKind::Data),
            idx.len(BlobKind::Tree)
        );
        println!("repository size:       {}", human_bytes(total_bytes));
        println!("unique data (raw):     {}", human_bytes(raw));
        println!("stored blobs:          {}", human_bytes(stored));
        println!("all snapshots (sum):   {}", human_bytes(logical));
        println!(
            "compression ratio:     {:.2}",
            v["compression_ratio"].as_f64().unwrap_or(0.0)
        );
        println!(
            "dedup ratio:           {:.2}",
            v["dedup_ratio"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct CatArgs {
    /// config | snapshot ID | index ID | tree ID | key ID
    what: String,
    /// Object id (or `latest` for snapshot)
    id: Option<String>,
}

pub fn cat(g: &GlobalArgs, a: CatArgs) -> Result<i32> {
    let need_id = || {
        a.id.clone()
            .ok_or_else(|| anyhow!("cat {} needs an id", a.what))
    };
    let v = match a.what.as_str() {
        "config" => {
            let r = open(g)?;
            let c = &r.config();
            json!({
                "repo_id": to_hex(&c.repo_id), "version": cairn_format::config::VERSION,
                "chunk_min": c.chunk_min, "chunk_avg": c.chunk_avg, "chunk_max": c.chunk_max,
                "zstd_level": c.zstd_level, "pack_target": c.pack_target, "created": format_time((c.created as i64).saturating_mul(1_000_000_000), true),
            })
        }
        "snapshot" => {
            let r = open(g)?;
            let (id, s) = r.resolve_snapshot(&need_id()?, &|_| true)?;
            snapshot_json(&id, &s)
        }
        "index" => {
            let r = open(g)?;
            let id = IndexId::from_hex(&need_id()?).ok_or_else(|| anyhow!("bad index id"))?;
            let f = r.read_index_object(&id)?;
            json!({
                "supersedes": f.supersedes.iter().map(|s| s.to_hex()).collect::<Vec<_>>(),
                "packs": f.packs.iter().map(|p| json!({
                    "id": p.id.to_hex(), "size": p.size,
                    "blobs": p.blobs.iter().map(|b| json!({
                        "kind": if b.kind == BlobKind::Data { "data" } else { "tree" },
                        "id": b.id.to_hex(), "offset": b.offset, "length": b.length, "raw_len": b.raw_len,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        }
        "tree" => {
            let r = open(g)?.load_index()?;
            let id = ChunkId::from_hex(&need_id()?).ok_or_else(|| anyhow!("bad tree id"))?;
            let t = r.load_tree(&id)?;
            Value::Array(
                t.nodes
                    .iter()
                    .map(|n| json!({"name": lossy(&n.name), "type": kind_name(n), "mode": format!("{:o}", n.mode), "size": n.size,
                        "uid": n.uid, "gid": n.gid, "mtime": format_node_time(&n.mtime), "inode": n.inode,
                        "content": match &n.kind {
                            NodeKind::File { extents } => json!(extents.iter().map(|e| match e {
                                cairn_format::tree::Extent::Chunk { id, len } => json!({"chunk": id.to_hex(), "len": len}),
                                cairn_format::tree::Extent::Hole { len } => json!({"hole": len}),
                            }).collect::<Vec<_>>()),
                            NodeKind::Dir { tree } => json!(tree.to_hex()),
                            NodeKind::Symlink { target } => json!(lossy(target)),
                            _ => Value::Null,
                        }}))
                    .collect(),
            )
        }
        "key" => {
            let r = open(g)?;
            let id = KeyId::from_hex(&need_id()?).ok_or_else(|| anyhow!("bad key id"))?;
            let k = r
                .list_keys()?
                .into_iter()
                .find(|k| k.id == id)
                .ok_or_else(|| anyhow!("no key {id}"))?;
            json!({"id": k.id.to_hex(), "created": k.created, "hostname": k.hostname, "username": k.username})
        }
        other => bail!("cannot cat {other:?}: use config, snapshot, index, tree or key"),
    };
    print_json(&v)?;
    Ok(0)
}
