//! PostgreSQL fingerprints, inside the snapshot `pg_dump` exports.

use crate::StackError;
use crate::catalog::Service;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};

use super::*;

/// A PostgreSQL session holding a transaction whose snapshot was exported;
/// the snapshot lives as long as this value.
pub struct PgSnapshot {
    child: Child,
    /// The snapshot id (`pg_dump --snapshot`, `SET TRANSACTION SNAPSHOT`).
    pub id: String,
}

impl Drop for PgSnapshot {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Open a repeatable-read transaction and export its snapshot.
pub fn pg_export_snapshot(svc: &Service) -> Result<PgSnapshot, StackError> {
    let db = svc.database.as_deref().unwrap_or_default();
    let mut c = crate::tools::tool(svc, "psql");
    c.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db]);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(svc, format!("psql: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(
            b"SET search_path = pg_catalog, pg_temp;\nBEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_catalog.pg_export_snapshot();\n",
        )
        .and_then(|_| stdin.flush())
        .map_err(|e| err(svc, format!("psql: {e}")))?;
    child.stdin = Some(stdin);
    let mut line = String::new();
    let mut r = BufReader::new(child.stdout.take().expect("piped"));
    let _ = r.read_line(&mut line);
    let id = line.trim().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        drop(child.stdin.take());
        let o = child
            .wait_with_output()
            .map_err(|e| err(svc, format!("psql: {e}")))?;
        return Err(err(
            svc,
            format!(
                "cannot export a snapshot of database {db:?}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ));
    }
    Ok(PgSnapshot { child, id })
}

/// Every fingerprint session: functions and operators resolve in
/// `pg_catalog` only, so a database (which may be hostile: restored from a
/// forged snapshot, or written by an application role) cannot make the
/// catalog's user — often a superuser — call its own `public.quote_ident`
/// or operator instead (as pg_dump does since CVE-2018-1058).
const PG_SESSION: &str = "SET search_path = pg_catalog, pg_temp;\nSET TimeZone = 'UTC';\nSET DateStyle = 'ISO, YMD';\nSET IntervalStyle = 'postgres';\nSET extra_float_digits = 1;\nSET bytea_output = 'hex';\nBEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n";

fn pg_script(snapshot: Option<&str>, body: &str) -> String {
    let mut s = PG_SESSION.to_string();
    if let Some(id) = snapshot {
        s += &format!("SET TRANSACTION SNAPSHOT '{id}';\n");
    }
    s + body + "\nCOMMIT;\n"
}

/// Fingerprint a PostgreSQL database (inside `snapshot` when given).
pub fn postgres(svc: &Service, snapshot: Option<&str>) -> Result<Fingerprint, StackError> {
    let db = svc.database.as_deref().unwrap_or_default();
    let psql = || {
        let mut c = crate::tools::tool(svc, "psql");
        c.args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
            "-f",
            "-",
        ]);
        c
    };
    // Tables (partitions through their parent) with their primary-key columns.
    let list = "COPY (SELECT n.nspname, c.relname, coalesce((SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname::pg_catalog.text) || CASE WHEN a.attcollation <> 0 THEN ' COLLATE pg_catalog.\"C\"' ELSE '' END, ', ' ORDER BY k.ord) FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum WHERE i.indrelid = c.oid AND i.indisprimary), '') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2) TO STDOUT WITH (FORMAT csv);";
    let out = crate::tools::run(svc, psql(), Some(pg_script(snapshot, list).as_bytes()))?;
    let mut tables = Vec::new();
    for rec in parse_csv(&out) {
        if rec.len() == 3 {
            tables.push((rec[0].clone(), rec[1].clone(), rec[2].clone()));
        }
    }
    let parts = crate::parallel::parallel(&tables, svc.parallelism as usize, |(s, t, pk)| {
        let order = if pk.is_empty() {
            // The row's text through the built-in record output, never a
            // cast: the table's owner owns its row type and may have made
            // a cast of it to text that runs its own function. `x.*`: a
            // column may be named `x` too.
            "pg_catalog.textin(pg_catalog.record_out(x.*)) COLLATE pg_catalog.\"C\"".to_string()
        } else {
            pk.clone()
        };
        let q = format!(
            "COPY (SELECT * FROM {}.{} AS x ORDER BY {order}) TO STDOUT;",
            crate::sql::pg::ident(s),
            crate::sql::pg::ident(t)
        );
        hash_output(
            svc,
            psql(),
            &pg_script(snapshot, &q),
            &format!("fingerprint of {s}.{t}"),
        )
        .map(|p| (format!("table:{s}.{t}"), p))
    });
    parts.into_iter().collect()
}
