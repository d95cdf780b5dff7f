//! The `flowgate` binary: check, render, token issue, bad config.

use std::process::Command;

use crate::helpers::*;

fn project(flows: &[(&str, &str)], templates: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let own = |files: &[(&str, &str)]| {
        files
            .iter()
            .map(|(n, c)| (n.to_string(), c.to_string()))
            .collect::<Vec<_>>()
    };
    let flows = own(flows);
    let templates = own(templates);
    write_files(
        &dir.path().join("flows"),
        &flows
            .iter()
            .map(|(n, c)| (n.as_str(), c.clone()))
            .collect::<Vec<_>>(),
    );
    write_files(
        &dir.path().join("templates"),
        &templates
            .iter()
            .map(|(n, c)| (n.as_str(), c.clone()))
            .collect::<Vec<_>>(),
    );
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    dir
}

fn flowgate(dir: &tempfile::TempDir, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .current_dir(dir.path())
        .env("FLOWGATE_SIGNING_KEY", SIGNING_KEY)
        .env("RUST_LOG", "error")
        .args(args)
        .output()
        .unwrap()
}

const GOOD: &str = r#"status = "live"
[trigger]
ref = "web1"
[response]
body = "ok.json.j2"
[[steps]]
ref = "calc"
kind = "transform"
set = { double = "{{ web1.n * 2 }}" }
[[steps]]
ref = "notify"
kind = "http"
url = "https://crm.example.com/hook"
"#;

/// A JSON body whose loop opens a string it never closes.
const OPEN_STRING_INLINE: &str = r#"status = "live"
[trigger]
ref = "web1"
[response]
body_inline = """
[{% for i in web1.items %}"{{ i }}{% endfor %}]"""
"#;

#[test]
fn check_reports_every_problem_with_path_and_line() {
    let bad = r#"status = "live"
[trigger]
ref = "web1"
colour = "red"
"#;
    let broken_template = r#"status = "live"
[trigger]
ref = "web1"
[response]
status = 700

[[steps]]
ref = "a"
kind = "transform"
set = { x = "{{ web1.x" }

[[steps]]
ref = "a"
kind = "log"
message = "{{ later.value }}"

[[steps]]
ref = "later"
kind = "delay"
duration = "1s"
url = "http://x"
"#;
    let dir = project(
        &[
            ("good.toml", GOOD),
            ("bad.toml", bad),
            ("broken.toml", broken_template),
            ("Bad Name.toml", GOOD),
            ("inline.toml", OPEN_STRING_INLINE),
        ],
        &[
            ("ok.json.j2", "{{ calc | tojson }}"),
            ("bad.j2", "line one\n{% if %}"),
            (
                "open.json.j2",
                "{\"a\":\n{% if x %}\n\"{{ x }}\n{% else %}\nnull\n{% endif %}}",
            ),
        ],
    );
    let out = flowgate(&dir, &["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for expected in [
        "templates/bad.j2:2: syntax error",
        "flows/bad.toml:4: unknown field `colour`",
        "flows/broken.toml:5: status 700 is outside 100..=599",
        "flows/broken.toml:10: syntax error",
        "flows/broken.toml:13: duplicate step ref `a`",
        "flows/broken.toml:15: `later` is not defined here",
        "flows/broken.toml:21: `url` is not a key of a `delay` step",
        "flows/Bad Name.toml:1: flow id `Bad Name`",
        "templates/open.json.j2:4: the branch before this `{% else %}` of the `{% if %}` ends inside a JSON string it started outside",
        "flows/inline.toml:6: the `{% for %}` block closed here ends inside a JSON string",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
    assert!(!stdout.contains("good.toml"), "{stdout}");
}

#[test]
fn check_passes_on_the_shipped_examples() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(binary())
        .current_dir(root)
        .env("FLOWGATE_SIGNING_KEY", SIGNING_KEY)
        .arg("check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("ok: 5 flow(s) valid"), "{stdout}");
}

#[test]
fn render_shows_the_answer_without_calling_http_steps() {
    let dir = project(
        &[("good.toml", GOOD)],
        &[("ok.json.j2", "{{ calc | tojson }}")],
    );
    std::fs::write(dir.path().join("sample.json"), r#"{"n": 21}"#).unwrap();
    let out = flowgate(&dir, &["render", "good", "--body", "sample.json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("HTTP 200\n"), "{stdout}");
    assert!(stdout.trim_end().ends_with(r#"{"double": 42}"#), "{stdout}");
    assert!(
        stderr.contains("http steps were not called (notify)"),
        "{stderr}"
    );
}

#[test]
fn token_issue_prints_only_the_token() {
    let dir = project(&[("good.toml", GOOD)], &[("ok.json.j2", "{}")]);
    // Tokens are minted for the flow's current generation, kept in Redis.
    let redis = RedisServer::start(false);
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[storage]\nbackend = \"redis\"\n[redis]\nurl = \"{}\"\n",
            redis.url()
        ),
    )
    .unwrap();
    let out = flowgate(&dir, &["token", "issue", "good", "--ttl", "90d"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.trim_end_matches('\n');
    assert!(
        token.starts_with("ey") && token.len() > 50 && !token.contains(char::is_whitespace),
        "{stdout:?}"
    );
    let keys = flowgate::token::TokenKeys::new(&flowgate::config::Secret::new(
        SIGNING_KEY.as_bytes().to_vec(),
    ));
    assert_eq!(keys.verify(token, "good", 0).unwrap().flow_id, "good");
    let unknown = flowgate(&dir, &["token", "issue", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(unknown.stdout.is_empty());
}

#[test]
fn bad_config_exits_64_with_one_line() {
    let dir = project(&[("good.toml", GOOD)], &[("ok.json.j2", "{}")]);
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nlisten = \"nowhere\"\n",
    )
    .unwrap();
    let out = flowgate(&dir, &["serve"]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("config.toml: server.listen: `nowhere` is not a host:port address"),
        "{stderr}"
    );
    let no_key = Command::new(binary())
        .current_dir(dir.path())
        .env_remove("FLOWGATE_SIGNING_KEY")
        .env("FLOWGATE_SERVER__LISTEN", "127.0.0.1:0")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(no_key.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("no signing key"));
}
