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

#[test]
fn version_names_the_commit_it_was_built_from() {
    let dir = tempfile::tempdir().unwrap();
    let out = flowgate(&dir, &["--version"]);
    assert!(out.status.success());
    let version = String::from_utf8(out.stdout).unwrap();
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    assert_eq!(
        version.trim(),
        format!("flowgate {} ({commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_load_into_bash_and_name_the_subcommands() {
    // In a folder without config.toml: nothing is read, nothing noted.
    let dir = tempfile::tempdir().unwrap();
    let out = flowgate(&dir, &["completions", "bash"]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = dir.path().join("flowgate.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // bash itself loads the script and completes `flowgate ru` to `runs`.
    let probe = format!(
        "source {}; COMP_WORDS=(flowgate ru); COMP_CWORD=1; COMP_LINE='flowgate ru'; COMP_POINT=11; _flowgate flowgate ru flowgate; echo \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let completed = Command::new("bash")
        .args(["--norc", "-c", &probe])
        .output()
        .unwrap();
    assert!(completed.status.success(), "{completed:?}");
    assert_eq!(String::from_utf8_lossy(&completed.stdout).trim(), "runs");
    for shell in ["zsh", "fish"] {
        let out = flowgate(&dir, &["completions", shell]);
        assert!(out.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("healthcheck"),
            "{shell}"
        );
    }
    let unknown = flowgate(&dir, &["completions", "tcsh"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn the_man_page_is_roff_naming_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = flowgate(&dir, &["man"]);
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH flowgate 1"), "{page}");
    for command in [
        "serve",
        "worker",
        "check",
        "render",
        "runs",
        "token",
        "healthcheck",
    ] {
        assert!(
            page.contains(command),
            "{command} missing from the man page"
        );
    }
    // `man` reads it without a warning, when man is installed.
    if Command::new("man").arg("--version").output().is_ok() {
        let path = dir.path().join("flowgate.1");
        std::fs::write(&path, &page).unwrap();
        let shown = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        assert!(shown.status.success(), "{shown:?}");
        assert!(String::from_utf8_lossy(&shown.stdout).contains("healthcheck"));
    }
    for section in [".SH ENVIRONMENT", ".SH FILES", ".SH EXIT STATUS"] {
        assert!(page.contains(section), "{section} missing");
    }
    // --dir writes the page each reference points at, down to the leaves.
    let pages = dir.path().join("man1");
    let out = flowgate(&dir, &["man", "--dir", pages.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let main = std::fs::read_to_string(pages.join("flowgate.1")).unwrap();
    assert_eq!(main, page, "the main page is the one `man` prints");
    let mut referenced: Vec<String> = Vec::new();
    let mut pending = vec!["flowgate.1".to_owned()];
    while let Some(name) = pending.pop() {
        let text = std::fs::read_to_string(pages.join(&name))
            .unwrap_or_else(|e| panic!("{name}, referenced, is missing: {e}"));
        for (at, _) in text.match_indices("(1)") {
            let start = text[..at]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '\\'))
                .map_or(0, |i| i + 1);
            let page = format!("{}.1", text[start..at].replace("\\-", "-"));
            if page.starts_with("flowgate-") && !referenced.contains(&page) {
                referenced.push(page.clone());
                pending.push(page);
            }
        }
    }
    for leaf in [
        "flowgate-runs-list.1",
        "flowgate-healthcheck.1",
        "flowgate-webhooks-create.1",
    ] {
        assert!(
            referenced.iter().any(|p| p == leaf),
            "{leaf} not reached: {referenced:?}"
        );
    }
}

#[tokio::test]
async fn healthcheck_exits_0_on_a_live_gateway_and_1_otherwise() {
    let app = spawn_app(&[]).await;
    // Awaited, not blocking: the gateway answers from this test's runtime.
    let healthcheck = |extra: String, args: Vec<String>| {
        let mut command = app.process(&extra, &[]);
        command.arg("healthcheck").args(args);
        tokio::process::Command::from(command).output()
    };
    let url = |path: &str| format!("http://{}{path}", app.addr);
    let live = healthcheck(String::new(), vec!["--url".into(), url("/healthz")])
        .await
        .unwrap();
    assert_eq!(live.status.code(), Some(0), "{live:?}");
    // From the config's listen address, an unspecified one probed on loopback.
    let listen = format!("[server]\nlisten = \"0.0.0.0:{}\"\n", app.addr.port());
    let from_config = healthcheck(listen.clone(), vec![]).await.unwrap();
    assert_eq!(from_config.status.code(), Some(0), "{from_config:?}");
    let ready = healthcheck(listen, vec!["--ready".into()]).await.unwrap();
    assert_eq!(ready.status.code(), Some(0), "{ready:?}");
    let nobody = format!("http://127.0.0.1:{}/healthz", free_port());
    let args = vec!["--url".into(), nobody, "--timeout".into(), "500ms".into()];
    let down = healthcheck(String::new(), args).await.unwrap();
    assert_eq!(down.status.code(), Some(1));
    // Something that answers, but not 200.
    let wrong = healthcheck(String::new(), vec!["--url".into(), url("/nowhere")])
        .await
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
}
