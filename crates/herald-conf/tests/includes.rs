//! `include` and `readonly_include` (docs/momentum-compat.md#lexical-rules): files and directories, resolution against
//! the including file's directory, hidden files and subdirectories skipped, cycles and missing files reported.

use std::fs;

use herald_conf::{Config, Value};

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&p, text).unwrap();
    p
}

#[test]
fn include_file_relative_to_including_file() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "conf/sub/domains.conf",
        "domain a.com { retry_interval = 7 }\n",
    );
    let main = write(
        tmp.path(),
        "conf/main.conf",
        "include \"sub/domains.conf\"\nretry_interval = 3\n",
    );
    let c = Config::load(&main).unwrap();
    assert_eq!(
        c.eval_words(&["domain", "a.com", "retry_interval"])
            .unwrap()
            .1,
        Value::Int(7)
    );
    assert_eq!(c.eval_words(&["retry_interval"]).unwrap().1, Value::Int(3));
}

#[test]
fn include_inside_a_scope_applies_to_that_scope() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "opts.conf", "retry_interval = 11\n");
    let main = write(
        tmp.path(),
        "main.conf",
        "domain b.com {\n  readonly_include opts.conf\n}\n",
    );
    let c = Config::load(&main).unwrap();
    assert_eq!(
        c.eval_words(&["domain", "b.com", "retry_interval"])
            .unwrap()
            .1,
        Value::Int(11)
    );
    assert_eq!(
        c.eval_words(&["retry_interval"]).unwrap().1,
        Value::Int(1200)
    );
}

#[test]
fn include_directory_in_lexical_order_skipping_hidden_and_subdirectories() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "d/20-b.conf",
        "retry_interval = 20\ndomain b.com { }\n",
    );
    write(
        tmp.path(),
        "d/10-a.conf",
        "retry_interval = 10\ndomain a.com { }\n",
    );
    write(tmp.path(), "d/.hidden.conf", "this is not = { valid\n");
    write(tmp.path(), "d/sub/nested.conf", "domain nested.com { }\n");
    let main = write(tmp.path(), "main.conf", "include d\n");
    let c = Config::load(&main).unwrap();
    // 20-b.conf comes last, so its value wins.
    assert_eq!(c.eval_words(&["retry_interval"]).unwrap().1, Value::Int(20));
    assert_eq!(c.domains(), vec!["a.com", "b.com"]);
}

#[test]
fn include_cycle_is_reported_at_the_include() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "a.conf",
        "retry_interval = 1\ninclude \"b.conf\"\n",
    );
    write(tmp.path(), "b.conf", "\n\n   include \"a.conf\"\n");
    let d = Config::load(tmp.path().join("a.conf")).unwrap_err();
    let errs: Vec<_> = d.errors().collect();
    assert_eq!(errs.len(), 1, "{d}");
    assert!(errs[0].location.file.ends_with("b.conf"), "{d}");
    assert_eq!((errs[0].location.line, errs[0].location.col), (3, 4));
    assert!(errs[0].message.contains("include cycle"), "{d}");
    assert!(errs[0].message.contains("a.conf includes"), "{d}");
}

#[test]
fn self_include_is_a_cycle() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "self.conf", "include self.conf\n");
    let d = Config::load(&p).unwrap_err();
    assert!(d.to_string().contains("include cycle"), "{d}");
}

/// A hard link is another path to the same file: including it is a cycle too. Here a directory holds a file that
/// includes its own directory and two hard links to it: by path each link is a new file, and the load recursed
/// through every order of them (each level holding its file) until the file count stopped it.
#[test]
fn a_hard_link_back_to_an_including_file_is_a_cycle() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    fs::create_dir(&dir).unwrap();
    let f = write(&dir, "a.conf", "include \".\"\n");
    for name in ["b.conf", "c.conf"] {
        fs::hard_link(&f, dir.join(name)).unwrap();
    }
    let main = write(tmp.path(), "main.conf", "include \"d\"\n");
    let d = Config::load(&main).unwrap_err();
    assert!(
        d.errors().all(|e| e.message.contains("include cycle")),
        "{d}"
    );
    // Each of the three files, read once from the directory, sees the three (one file by identity) as a cycle.
    assert_eq!(d.errors().count(), 9, "{d}");
}

/// A chain of includes deeper than 32 files stops with an error naming the limit, however many files it has.
#[test]
fn includes_nested_too_deep_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..40 {
        write(
            tmp.path(),
            &format!("f{i}.conf"),
            &format!("include \"f{}.conf\"\n", i + 1),
        );
    }
    write(tmp.path(), "f40.conf", "retry_interval = 1\n");
    let d = Config::load(tmp.path().join("f0.conf")).unwrap_err();
    assert!(
        d.to_string().contains("nested more than 32 files deep"),
        "{d}"
    );
    // Within the limit, a chain loads.
    write(tmp.path(), "f20.conf", "retry_interval = 1\n");
    assert!(Config::load(tmp.path().join("f0.conf")).is_ok());
}

#[test]
fn missing_include_is_reported_at_the_include() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "main.conf",
        "retry_interval = 1\n  include \"nowhere.conf\"\n",
    );
    let d = Config::load(&p).unwrap_err();
    let e = d.errors().next().unwrap();
    assert_eq!((e.location.line, e.location.col), (2, 3));
    assert!(e.message.contains("cannot include `nowhere.conf`"), "{d}");
    assert!(e.message.contains("no such file"), "{d}");
}

#[test]
fn errors_in_included_files_name_that_file() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "bad.conf", "\nretry_interval = x\n");
    let p = write(tmp.path(), "main.conf", "include bad.conf\nbogus = 1\n");
    let d = Config::load(&p).unwrap_err();
    let errs: Vec<String> = d.errors().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].contains("bad.conf:2:18: error:"), "{}", errs[0]);
    assert!(errs[1].contains("main.conf:2:1: error:"), "{}", errs[1]);
}

#[test]
fn missing_top_level_file() {
    let d = Config::load("/nonexistent/herald.conf").unwrap_err();
    assert!(
        d.to_string()
            .starts_with("/nonexistent/herald.conf:1:1: error: cannot read"),
        "{d}"
    );
}

#[test]
fn an_empty_include_path_is_refused_not_read_as_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    // Joined to the directory, "" would name it, and every file in it would be included.
    write(tmp.path(), "conf/other.conf", "retry_interval = 9\n");
    let main = write(
        tmp.path(),
        "conf/main.conf",
        "retry_interval = 3\ninclude \"\"\nreadonly_include \"  \"\n",
    );
    let d = Config::load(&main).unwrap_err();
    let errors: Vec<String> = d.errors().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].ends_with("main.conf:2:9: error: `include \"\"`: the path is empty; name the file or directory to include"),
        "{errors:#?}"
    );
    assert!(
        errors[1].contains(
            "main.conf:3:18: error: `readonly_include \"  \"`: the path is empty (only spaces)"
        ),
        "{errors:#?}"
    );
    // Not read: no include cycle through main.conf, no setting from other.conf.
    assert!(!d.to_string().contains("cycle"), "{d}");
}
