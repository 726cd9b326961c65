//! `cairn init`: create a repository (and probe the store).

use super::*;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Minimum chunk size
    #[arg(long, value_parser = parse_size, default_value = "256KiB")]
    chunk_min: u32,
    /// Average chunk size
    #[arg(long, value_parser = parse_size, default_value = "1MiB")]
    chunk_avg: u32,
    /// Maximum chunk size
    #[arg(long, value_parser = parse_size, default_value = "4MiB")]
    chunk_max: u32,
    /// zstd level for blobs (-7..=22)
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    compression: i32,
    /// Target pack size
    #[arg(long, value_parser = parse_size, default_value = "16MiB")]
    pack_size: u32,
    #[command(flatten)]
    kdf: KdfArgs,
}

#[derive(Args, Debug, Clone)]
pub struct KdfArgs {
    /// Argon2id memory cost of the new key, KiB
    #[arg(long, default_value_t = 65536)]
    kdf_memory_kib: u32,
    /// Argon2id iterations of the new key
    #[arg(long, default_value_t = 3)]
    kdf_iterations: u32,
    /// Argon2id lanes of the new key
    #[arg(long, default_value_t = 4)]
    kdf_parallelism: u32,
    /// Accept Argon2id settings below the floor (19 MiB, 2 iterations):
    /// for tests only, a stolen key file is then cheap to guess against
    #[arg(long)]
    insecure_kdf: bool,
}

/// The weakest Argon2id settings a key file may have without
/// `--insecure-kdf` (OWASP's minimum for Argon2id: m = 19 MiB, t = 2).
pub(crate) const KDF_FLOOR_KIB: u32 = 19 * 1024;
pub(crate) const KDF_FLOOR_ITERATIONS: u32 = 2;

impl KdfArgs {
    pub(crate) fn params(&self) -> Result<KdfParams> {
        let p = KdfParams {
            m_cost: self.kdf_memory_kib,
            t_cost: self.kdf_iterations,
            p_cost: self.kdf_parallelism,
        };
        p.validate()?;
        if !self.insecure_kdf && (p.m_cost < KDF_FLOOR_KIB || p.t_cost < KDF_FLOOR_ITERATIONS) {
            bail!(
                "refusing a weak key derivation (Argon2id m = {} KiB, t = {}): a stolen key file would be cheap to guess against; the floor is m = {KDF_FLOOR_KIB} KiB, t = {KDF_FLOOR_ITERATIONS} (--insecure-kdf allows it, for tests)",
                p.m_cost,
                p.t_cost
            );
        }
        Ok(p)
    }
}

pub fn init(g: &GlobalArgs, a: InitArgs) -> Result<i32> {
    let loc = location(g)?;
    let mut cfg = Config::new_default(cairn_repo::now_ns() / 1_000_000_000);
    cfg.chunk_min = a.chunk_min;
    cfg.chunk_avg = a.chunk_avg;
    cfg.chunk_max = a.chunk_max;
    cfg.zstd_level = a.compression;
    cfg.pack_target = a.pack_size;
    cfg.validate()?;
    let kdf = a.kdf.params()?;
    let store = backend(g, true, true)?;
    if store.exists(store::CONFIG)? {
        bail!("a repository already exists at {loc}");
    }
    let conditional = match cairn_repo::backend::probe_conditional_create(&store) {
        Ok(c) => c,
        Err(e) => match cairn_repo::backend::missing_bucket(&store) {
            Some(why) => bail!("cannot create a repository at {loc}: {why}; create it first"),
            None => {
                return Err(
                    anyhow::Error::new(e).context(format!("writing a test object to {loc}"))
                );
            }
        },
    };
    if conditional == ConditionalCreate::Ignored {
        eprintln!(
            "warning: {loc} ignores create-only writes (If-None-Match); cairn names every object but the config by the hash of its bytes, so a repeated write stores the same bytes, but two `cairn init` racing on this location could replace each other's config, and the prune lease cannot keep two prunes apart: prune refuses there unless given --single-pruner (format-spec §1.1)"
        );
    } else if store.write_once == cairn_repo::store::WriteOnce::Emulated {
        eprintln!(
            "warning: {loc}: create-only writes are emulated with a HEAD before each write (conditional_put=disabled), so the prune lease cannot keep two prunes apart: prune refuses there unless given --single-pruner (format-spec §1.1)"
        );
    }
    let pw = read_password(g, true)?;
    let repo = Repository::init_store(store, &pw, cfg, kdf)?;
    if g.json {
        print_json(
            &json!({"repository": loc, "id": to_hex(&repo.config().repo_id), "key": repo.key_id().to_hex()}),
        )?;
    } else {
        println!(
            "created cairn repository {} at {loc}",
            &to_hex(&repo.config().repo_id)[..8]
        );
        println!("keep the password safe: without it the data cannot be read");
    }
    Ok(0)
}
