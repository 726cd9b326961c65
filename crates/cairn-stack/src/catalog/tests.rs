use super::*;

fn parse(src: &str) -> Result<Catalog, CatalogError> {
    Catalog::parse(Path::new("cairn.toml"), src, None)
}

#[test]
fn waves_follow_dependencies() {
    let c = parse(
        r#"
[service.db]
kind = "postgres"
database = "x"
[service.cache]
kind = "redis"
[service.api]
kind = "command"
backup = "cat s"
restore = "cat > s"
depends_on = ["db", "cache"]
[service.web]
kind = "files"
path = "/srv"
depends_on = ["api"]
"#,
    )
    .unwrap();
    let all = c.select(&[], false).unwrap();
    assert_eq!(
        c.waves(&all),
        vec![
            vec!["cache".to_string(), "db".into()],
            vec!["api".into()],
            vec!["web".into()]
        ]
    );
    let some = c.select(&["api".into()], true).unwrap();
    assert_eq!(some.len(), 3);
}

#[test]
fn errors_name_file_line_and_services() {
    let e = parse("[service.a]\nkind = \"files\"\npath = \"/a\"\ndepends_on = [\"ghost\"]\n")
        .unwrap_err();
    assert_eq!(
        e.0,
        vec!["cairn.toml:4: service a depends on unknown service \"ghost\"".to_string()]
    );
    let e = parse("[service.a]\nkind = \"files\"\npath = \"/a\"\ncolour = 1\n").unwrap_err();
    assert!(
        e.0[0].starts_with("cairn.toml:4:") && e.0[0].contains("colour"),
        "{:?}",
        e.0
    );
    let e =
        parse("[service.a]\nkind = \"files\"\npath = \"/a\"\nrto = \"2 minutes\"\n").unwrap_err();
    assert!(
        e.0[0].starts_with("cairn.toml:4:") && e.0[0].contains("duration"),
        "{:?}",
        e.0
    );
    let e = parse(
        "[service.a]\nkind = \"files\"\npath = \"/a\"\ndepends_on = [\"b\"]\n[service.b]\nkind = \"files\"\npath = \"/b\"\ndepends_on = [\"a\"]\n",
    )
    .unwrap_err();
    assert!(
        e.0[0].contains("dependency cycle: a -> b -> a"),
        "{:?}",
        e.0
    );
    assert!(e.0[0].starts_with("cairn.toml:1:"), "{:?}", e.0);
    let e = parse("[service.a]\nkind = \"mongo\"\n").unwrap_err();
    assert!(
        e.0[0].starts_with("cairn.toml:2:") && e.0[0].contains("unknown kind"),
        "{:?}",
        e.0
    );
}

#[test]
fn invariants_parse_and_bad_ones_name_their_line() {
    let c = parse(
        r#"
[service.db]
kind = "postgres"
database = "x"
[[service.db.invariant]]
sql = "select count(*) from t"
at_least = 10
[service.other]
kind = "mariadb"
database = "y"
[[invariant]]
name = "cross"
services = ["db", "other"]
command = "echo 0"
equals = 0
"#,
    )
    .unwrap();
    let i = &c.services["db"].invariants[0];
    assert_eq!(i.name, "db#1");
    assert_eq!(i.expect, Expect::AtLeast(10.0));
    assert_eq!(
        i.check,
        Check::Sql {
            on: "db".into(),
            query: "select count(*) from t".into()
        }
    );
    assert_eq!(c.invariants[0].services, vec!["db", "other"]);
    assert_eq!(c.invariants[0].expect, Expect::Equals("0".into()));
    assert_eq!(c.invariants[0].line, 11);

    let e = parse("[service.a]\nkind = \"files\"\npath = \"/a\"\n[[invariant]]\nservices = [\"a\", \"ghost\"]\ncommand = \"true\"\nequals = 1\n").unwrap_err();
    assert!(
        e.0[0].starts_with("cairn.toml:5:") && e.0[0].contains("unknown service \"ghost\""),
        "{:?}",
        e.0
    );
    let e = parse("[service.a]\nkind = \"files\"\npath = \"/a\"\n[[service.a.invariant]]\ncommand = \"true\"\n").unwrap_err();
    assert!(
        e.0[0].starts_with("cairn.toml:4:")
            && e.0[0].contains("equals, at_least, at_most, matches"),
        "{:?}",
        e.0
    );
    let e = parse("[service.a]\nkind = \"files\"\npath = \"/a\"\n[[invariant]]\nservices = [\"a\"]\nsql = \"select 1\"\nequals = 1\n").unwrap_err();
    assert!(e.0[0].contains("needs `on"), "{:?}", e.0);
    let e = parse("[service.a]\nkind = \"files\"\npath = \"/a\"\n[[service.a.invariant]]\ncommand = \"x\"\nmatches = \"(\"\n").unwrap_err();
    assert!(e.0[0].contains("bad `matches` pattern"), "{:?}", e.0);
}

#[test]
fn durations_too_long_and_odd_database_names_are_errors_not_panics() {
    for d in ["18446744073709551615s1s", "999999999999999999d", "36600d1s"] {
        assert!(parse_duration(d).is_err(), "{d}");
    }
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    let e = parse("[defaults]\nrto = \"18446744073709551615s1s\"\n[service.a]\nkind = \"files\"\npath = \"/a\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cairn.toml:2:") && e.contains("too long"), "{e}");
    let long = format!("brk_{}", "a".repeat(60));
    let e = parse(&format!(
        "[service.d]\nkind = \"postgres\"\ndatabase = \"{long}\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("cairn.toml:3:") && e.contains("keeps only the first 63"),
        "{e}"
    );
    for db in ["dbname=orders", "postgresql://h/orders", "--init-command=x"] {
        let e = parse(&format!(
            "[service.d]\nkind = \"postgres\"\ndatabase = \"{db}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("cairn.toml:3: service d: database")
                && e.contains("not a plain database name"),
            "{e}"
        );
    }
}

/// Another kind's field in an environment override names its own line,
/// however the override's table is written.
#[test]
fn fields_of_other_kinds_in_overrides_name_their_line_in_any_spelling() {
    for (src, line) in [
        (
            "# [service.m.env.staging]\n[service.m]\nkind = \"mariadb\"\ndatabase = \"d\"\n\n[service.m.env.\"staging\"]\ndatabase = \"e\"\ntemp_dir = \"/t\"\n",
            8,
        ),
        (
            "[service.m]\nkind = \"mariadb\"\ndatabase = \"d\"\n[ service.m.env.staging ]\ntemp_dir = \"/t\"\n",
            5,
        ),
        (
            "[service.m]\nkind = \"mariadb\"\ndatabase = \"d\"\nenv.staging = { temp_dir = \"/t\" }\n",
            4,
        ),
    ] {
        let e = parse(src).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "cairn.toml:{line}: service m (kind mariadb), env staging: temp_dir is not a field"
            )),
            "{e}\n{src}"
        );
    }
}

/// A misspelt kind on a service others depend on is a file:line error,
/// not a panic (catalog.rs indexed the missing service).
#[test]
fn an_unknown_kind_with_dependents_is_an_error_naming_its_line() {
    let e = parse(
        "[service.cache]\nkind = \"rediss\"\n[service.api]\nkind = \"command\"\nbackup = \"b\"\nrestore = \"r\"\ndepends_on = [\"cache\"]\n",
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("cairn.toml:2: service cache: unknown kind \"rediss\""),
        "{msg}"
    );
}

/// Fields of another kind are refused where they are written, also in
/// an environment override.
#[test]
fn fields_of_other_kinds_are_errors_naming_their_line() {
    let e = parse(
        "[service.sessions]\nkind = \"redis\"\nkey_pattern = \"s:*\"\ndatabase = \"orders\"\n[service.up]\nkind = \"files\"\npath = \"/srv\"\n[service.up.env.staging]\ntarget = \"/t\"\nhost = \"db\"\n",
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("cairn.toml:4: service sessions (kind redis): database is not a field of this kind (it belongs to kind postgres, mariadb)"),
        "{msg}"
    );
    assert!(
        msg.contains(
            "cairn.toml:10: service up (kind files), env staging: host is not a field of this kind"
        ),
        "{msg}"
    );
    // Every kind's own fields pass.
    parse("[service.db]\nkind = \"postgres\"\nhost = \"h\"\nport = 1\nuser = \"u\"\npassword = \"p\"\ndatabase = \"d\"\nparallelism = 2\nstart = \"s\"\nstop = \"t\"\nrto = \"1m\"\n").unwrap();
}

#[test]
fn environment_overrides_apply() {
    let src = "[service.db]\nkind = \"postgres\"\ndatabase = \"orders\"\n[service.db.env.staging]\ndatabase = \"orders_staging\"\n";
    let prod = Catalog::parse(Path::new("c"), src, None).unwrap();
    let st = Catalog::parse(Path::new("c"), src, Some("staging")).unwrap();
    assert_eq!(prod.services["db"].database.as_deref(), Some("orders"));
    assert_eq!(
        st.services["db"].database.as_deref(),
        Some("orders_staging")
    );
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
}
