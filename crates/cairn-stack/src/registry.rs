//! The registry of datastore kinds: the ones cairn ships ([`BUILT_IN`]) and
//! those registered at run time ([`register`]), by name. It sits above the
//! kinds (`kinds/`), the [`Datastore`] trait and the catalog, and joins
//! them: a [`Kind`] is a name the catalog found here, [`Kind::datastore`]
//! its implementation. What needs both lives here too: [`Catalog::load`]
//! and [`Catalog::parse`], which validate a catalog against the registered
//! kinds (the catalog knows them only as a table of names and fields), and
//! the live views, which ask each service's kind.

use std::path::Path;
use std::sync::RwLock;

use crate::catalog::{Catalog, CatalogError, Kind, KindTable, Service};
use crate::datastore::Datastore;

/// The kinds cairn ships.
pub static BUILT_IN: &[&dyn Datastore] = &[
    &crate::kinds::postgres::Postgres,
    &crate::kinds::mariadb::Mariadb,
    &crate::kinds::redis::Redis,
    &crate::kinds::files::Files,
    &crate::kinds::command::CommandKind,
    &crate::kinds::sqlite::Sqlite,
];

/// Kinds registered at run time (embedders, tests).
static EXTRA: RwLock<Vec<&'static dyn Datastore>> = RwLock::new(Vec::new());

/// Make a kind available to catalogs parsed from now on. A name already
/// taken is refused.
pub fn register(d: &'static dyn Datastore) -> Result<(), String> {
    if lookup(d.name()).is_some() {
        return Err(format!("datastore kind {:?} exists already", d.name()));
    }
    EXTRA.write().unwrap_or_else(|e| e.into_inner()).push(d);
    Ok(())
}

/// The kind named `name`.
pub fn lookup(name: &str) -> Option<&'static dyn Datastore> {
    BUILT_IN
        .iter()
        .copied()
        .find(|d| d.name() == name)
        .or_else(|| {
            EXTRA
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied()
                .find(|d| d.name() == name)
        })
}

/// Every kind's name (for error messages).
pub fn names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = BUILT_IN.iter().map(|d| d.name()).collect();
    v.extend(
        EXTRA
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|d| d.name()),
    );
    v
}

/// Every kind.
pub fn all() -> Vec<&'static dyn Datastore> {
    let mut v: Vec<&'static dyn Datastore> = BUILT_IN.to_vec();
    v.extend(
        EXTRA
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied(),
    );
    v
}

/// The registry as the catalog sees it: names and fields.
struct Registry;

impl KindTable for Registry {
    fn find(&self, name: &str) -> Option<&'static str> {
        lookup(name).map(|d| d.name())
    }

    fn names(&self) -> Vec<&'static str> {
        names()
    }

    fn fields(&self, kind: Kind) -> &'static [&'static str] {
        kind.datastore().fields()
    }

    fn required(&self, kind: Kind) -> &'static [(&'static str, &'static str)] {
        kind.datastore().required()
    }

    fn takers(&self, field: &str) -> Vec<&'static str> {
        all()
            .into_iter()
            .filter(|d| d.fields().contains(&field))
            .map(|d| d.name())
            .collect()
    }
}

impl Kind {
    /// The kind of this name, if one is registered.
    pub fn named(name: &str) -> Option<Kind> {
        Kind::in_table(name, &Registry)
    }

    /// Its implementation.
    pub fn datastore(self) -> &'static dyn Datastore {
        lookup(self.name()).expect("a Kind is only made from a registered name")
    }
}

impl Service {
    /// The service as its restore target: a files service whose `target`
    /// differs from `path` is described by the target (what a safety
    /// snapshot backs up and a rollback restores).
    pub fn live_view(&self) -> Service {
        self.kind.datastore().live_view(self)
    }
}

impl Catalog {
    /// Read and validate a catalog file for an environment (`None` = production).
    pub fn load(file: &Path, env: Option<&str>) -> Result<Catalog, CatalogError> {
        let src = std::fs::read_to_string(file)
            .map_err(|e| CatalogError(vec![format!("{}: {e}", file.display())]))?;
        Self::parse(file, &src, env)
    }

    /// Parse and validate catalog text.
    pub fn parse(file: &Path, src: &str, env: Option<&str>) -> Result<Catalog, CatalogError> {
        Catalog::parse_with(file, src, env, &Registry)
    }

    /// The catalog with every service as its restore target ([`Service::live_view`]).
    pub fn live_view(&self) -> Catalog {
        let mut c = self.clone();
        for s in c.services.values_mut() {
            *s = s.live_view();
        }
        c
    }
}
