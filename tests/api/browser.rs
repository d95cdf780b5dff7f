//! The web console in a real browser: headless Chromium driven over
//! WebDriver (`chromedriver`, through `fantoccini`) against a real gateway
//! on loopback. Each test saves screenshots of the pages it visits under
//! `target/console-screenshots/`.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use flowgate::error::PAUSED_BODY;
use flowgate::token::{ConsoleUse, Role};
use serde_json::json;

use crate::helpers::*;

const FLOW: &str = r#"
status = "live"
[trigger]
ref = "web1"
[response]
body_inline = '{"ok": true}'
[[steps]]
ref = "greet"
kind = "transform"
set = { hello = "{{ web1.name }}" }
[[steps]]
ref = "check"
kind = "fail"
if = "web1.fail"
message = "refused {{ web1.name }}"
"#;

/// A headless Chromium under `chromedriver`, closed when dropped: the
/// driver runs in a process group of its own, and dropping the browser
/// kills the whole group, so no Chromium outlives its test, even one that
/// panics.
struct Browser {
    client: Client,
    driver: Child,
    origin: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group's id is the driver's pid (`process_group(0)`).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// A browser for the console of `app`, `width` × `height` pixels.
    async fn open(app: &TestApp, width: u32, height: u32) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver must be installed (scripts/test.sh installs it)");
        let mut options = json!({ "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--hide-scrollbars",
            format!("--window-size={width},{height}"),
        ] });
        if width < 600 {
            // A window is never narrower than 500 pixels; a phone's screen
            // is emulated instead (its viewport, as a phone reads `<meta
            // name="viewport">`).
            options["mobileEmulation"] = json!({ "deviceMetrics": {
                "width": width, "height": height, "pixelRatio": 1, "mobile": true, "touch": true,
            } });
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut client = None;
        for _ in 0..100 {
            match ClientBuilder::new(connector.clone())
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => {
                    client = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Browser {
            client: client.expect("chromedriver did not start a session"),
            driver,
            origin: format!("http://{}", app.addr),
        }
    }

    async fn go(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.origin))
            .await
            .unwrap();
    }

    /// Saves the page as `target/console-screenshots/<name>.png`.
    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn text(&self) -> String {
        self.client
            .find(Locator::Css("main"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Clicks the button labelled `label` (the first one), which posts a
    /// form, and waits for the page that answers.
    async fn submit(&self, label: &str) {
        let button = format!("//button[normalize-space()='{label}']");
        self.navigate_by(Locator::XPath(&button)).await;
    }

    /// Follows the link reading `text`, and waits for the page.
    async fn follow(&self, text: &str) {
        self.navigate_by(Locator::LinkText(text)).await;
    }

    /// Clicks what `target` finds and waits for the page that loads.
    async fn navigate_by(&self, target: Locator<'_>) {
        let before = self.client.find(Locator::Css("html")).await.unwrap();
        let label = format!("{target:?}");
        self.client
            .find(target)
            .await
            .unwrap_or_else(|_| panic!("nothing matches {label}"))
            .click()
            .await
            .unwrap();
        for _ in 0..100 {
            // The old page's root goes stale once the new page replaced it.
            if before.tag_name().await.is_err() {
                self.wait_for("main").await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("clicking {label} loaded no new page");
    }

    /// The labels of the page's action buttons (those that post).
    async fn buttons(&self) -> Vec<String> {
        let mut labels = Vec::new();
        for button in self
            .client
            .find_all(Locator::Css("main form[method=post] button"))
            .await
            .unwrap()
        {
            labels.push(button.text().await.unwrap());
        }
        labels
    }

    /// Signs in with a one-time link for `role`, as `flowgate console-link` prints.
    async fn sign_in(&self, app: &TestApp, role: Role) {
        let link = app
            .keys
            .issue_console("alice", role, Duration::from_secs(600), ConsoleUse::Link)
            .unwrap();
        self.go(&format!("/console/sign-in#link={link}")).await;
        self.wait_for_path("/console/flows").await;
    }

    /// Waits until the page holds an element matching `css`.
    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        for _ in 0..100 {
            if let Ok(found) = self.client.find(Locator::Css(css)).await {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no `{css}` on {}", self.client.current_url().await.unwrap())
    }

    async fn wait_for_path(&self, path: &str) {
        for _ in 0..100 {
            if self.client.current_url().await.unwrap().path() == path {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the browser never reached {path}; it is at {}: {}",
            self.client.current_url().await.unwrap(),
            self.client.source().await.unwrap_or_default()
        );
    }
}

async fn browser_signs_in_with_a_link_and_pauses_a_flow() {
    let app = spawn_app(&[("signup", FLOW.to_owned())]).await;
    assert_eq!(
        app.post_json("signup", r#"{"name": "Ada"}"#).await.status(),
        200
    );
    let browser = Browser::open(&app, 1280, 800).await;
    browser.go("/console/sign-in").await;
    browser.screenshot("sign-in").await;
    browser.sign_in(&app, Role::Ops).await;
    // The link's code is gone from the address bar, and cannot be used again.
    let url = browser.client.current_url().await.unwrap();
    assert!(url.fragment().is_none(), "{url}");

    let text = browser.text().await;
    assert!(text.contains("signup") && text.contains("live"), "{text}");
    // The webhook URL is shown whole, for copying.
    assert!(
        text.contains(&format!("{}/v1/flow-webhook/signup", browser.origin)),
        "{text}"
    );
    browser.screenshot("flows").await;
    browser.submit("Pause").await;
    browser.wait_for_path("/console/flows").await;
    let text = browser.text().await;
    assert!(
        text.contains("paused") && text.contains("override"),
        "{text}"
    );
    assert!(browser.buttons().await.contains(&"Unpause".to_owned()));
    let paused = app.post_json("signup", "{}").await;
    assert_eq!(paused.text().await.unwrap(), PAUSED_BODY);

    browser.go("/console/audit").await;
    let text = browser.text().await;
    assert!(
        text.contains("flow.pause") && text.contains("alice"),
        "{text}"
    );
    browser.screenshot("audit").await;
}

async fn browser_shows_a_failed_runs_step_error_and_sender_html_as_text() {
    let app = spawn_app(&[("signup", FLOW.to_owned())]).await;
    let hostile =
        r#"<script>document.title='owned'</script>"><img src=x onerror="document.title='owned'">"#;
    let response = app
        .post_json(
            "signup",
            &json!({ "fail": true, "name": hostile }).to_string(),
        )
        .await;
    let run_id = run_id(&response);
    app.record_when(&run_id, |r| r.status == "failed").await;
    let browser = Browser::open(&app, 1280, 1000).await;
    browser.sign_in(&app, Role::Author).await;
    browser.go("/console/runs").await;
    browser.screenshot("runs").await;
    browser.follow(&run_id).await;
    browser
        .wait_for_path(&format!("/console/runs/{run_id}"))
        .await;
    let text = browser.text().await;
    assert!(
        text.contains(&format!("Step check: refused {hostile}")),
        "{text}"
    );
    // The sender's markup is text on the page: no element, nothing ran.
    let title = browser.client.title().await.unwrap();
    assert!(!title.contains("owned"), "{title}");
    let injected = browser
        .client
        .find_all(Locator::Css("img, main script"))
        .await
        .unwrap();
    assert!(injected.is_empty());
    browser.screenshot("run").await;

    // On a phone-sized screen the page still fits its width.
    let phone = Browser::open(&app, 390, 844).await;
    phone.sign_in(&app, Role::Viewer).await;
    phone
        .check_phone_page("run-failed", &format!("/console/runs/{run_id}"))
        .await;
}

async fn browser_creates_a_webhook_and_views_its_ping() {
    let app = spawn_app(&[("signup", FLOW.to_owned())]).await;
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let browser = Browser::open(&app, 1280, 1000).await;
    browser.sign_in(&app, Role::Ops).await;
    browser.go("/console/webhooks").await;
    let form = browser
        .client
        .form(Locator::Css("form.stack"))
        .await
        .unwrap();
    form.set_by_name("name", "Billing").await.unwrap();
    form.set_by_name("url", &receiver.url("/hooks"))
        .await
        .unwrap();
    browser.screenshot("webhook-create").await;
    browser.submit("Create webhook").await;
    let secret = browser
        .wait_for("#shown-secret")
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    let text = browser.text().await;
    assert!(text.contains("shown once"), "{text}");
    assert!(secret.starts_with("whsec_"), "{secret}");
    browser.follow("Done").await;
    browser.wait_for_path("/console/webhooks").await;
    browser.follow("Billing").await;
    // The ping was sent on creation; its attempt appears in the log.
    let mut text = String::new();
    for _ in 0..50 {
        text = browser.text().await;
        if text.contains("ping") && text.contains("succeeded") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        browser.client.refresh().await.unwrap();
    }
    assert!(
        text.contains("ping") && text.contains("succeeded"),
        "{text}"
    );
    browser
        .client
        .find(Locator::XPath("//summary[normalize-space()='View']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let text = browser.text().await;
    assert!(
        text.contains("webhook-signature")
            && text.contains("\"type\":\"ping\"")
            && text.contains("Status 200"),
        "{text}"
    );
    browser.screenshot("webhook").await;
    assert_eq!(receiver.requests().len(), 1);
}

async fn browser_viewer_sees_no_actions_and_a_cross_site_form_is_refused() {
    let app = spawn_app(&[("signup", FLOW.to_owned())]).await;
    let browser = Browser::open(&app, 1280, 800).await;
    browser.sign_in(&app, Role::Ops).await;
    // A page elsewhere that posts to the console's pause button when opened.
    let attack = format!(
        "data:text/html,<form method=post action='{}/console/flows/signup/pause'><input name=_back value=/console/flows></form><script>document.forms[0].submit()</script>",
        browser.origin
    );
    browser.client.goto(&attack).await.unwrap();
    // The forged post was answered once the browser shows the gateway's
    // answer: whatever it did, it has done.
    let mut answered = false;
    for _ in 0..100 {
        let url = browser.client.current_url().await.unwrap();
        if url.scheme() == "http" {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "the forged form was never posted");
    assert_eq!(
        app.post_json("signup", "{}").await.status(),
        200,
        "not paused"
    );
    let answer = app.post_json("signup", "{}").await.text().await.unwrap();
    assert_ne!(answer, PAUSED_BODY, "the forged post paused the flow");

    let viewer = Browser::open(&app, 1280, 800).await;
    viewer.sign_in(&app, Role::Viewer).await;
    assert_eq!(
        viewer.buttons().await,
        Vec::<String>::new(),
        "flows: {}",
        viewer.client.source().await.unwrap()
    );
    viewer.go("/console/webhooks").await;
    assert_eq!(viewer.buttons().await, Vec::<String>::new(), "webhooks");
    viewer.screenshot("webhooks-viewer").await;
    // Signing out is the one button a viewer has, in the header.
    viewer.click_header("Sign out").await;
    viewer.wait_for_path("/console/sign-in").await;
    viewer.go("/console/flows").await;
    viewer.wait_for_path("/console/sign-in").await;
}

impl Browser {
    /// Opens `path` and checks that it fits the (phone-sized) window's
    /// width and that every control a person can reach has a name a screen
    /// reader reads (a label, or a button's own text); saves it as
    /// `phone-<name>`.
    async fn check_phone_page(&self, name: &str, path: &str) {
        self.go(path).await;
        self.wait_for_path(path).await;
        self.wait_for("main").await;
        let overflow = self
            .js("return document.documentElement.scrollWidth - window.innerWidth;")
            .await;
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "{path} is wider than a phone by {overflow}px"
        );
        // Nothing to read or press hides past the right edge (in a table
        // that scrolls sideways, say).
        let hidden = self
            .js(r#"return [...document.querySelectorAll('main a, main button, main input, main select, main code')]
                     .filter(e => { const r = e.getBoundingClientRect();
                                    return r.width > 0 && r.right > window.innerWidth + 1; })
                     .map(e => e.outerHTML);"#)
            .await;
        assert_eq!(hidden, json!([]), "{path}: past the right edge");
        let unlabelled = self
            .js(r#"return [...document.querySelectorAll(
                       'input:not([type=hidden]), select, textarea, button, summary')]
                     .filter(e => e.tagName === 'BUTTON' || e.tagName === 'SUMMARY'
                       ? !(e.textContent.trim() || e.getAttribute('aria-label'))
                       : !((e.labels && e.labels.length) || e.getAttribute('aria-label')))
                     .map(e => e.outerHTML);"#)
            .await;
        assert_eq!(unlabelled, json!([]), "{path}");
        let controls = self
            .js("return document.querySelectorAll('main a, main button, main input:not([type=hidden]), main summary').length;")
            .await;
        assert!(
            controls.as_u64().unwrap() > 0,
            "{path} has nothing to check"
        );
        self.screenshot(&format!("phone-{name}")).await;
    }

    /// What `script` returns, run in the page.
    async fn js(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    async fn click_header(&self, label: &str) {
        self.client
            .find(Locator::XPath(&format!(
                "//header//button[normalize-space()='{label}']"
            )))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }
}

async fn browser_every_page_fits_a_phone_labels_its_controls_and_works_by_keyboard() {
    let app = spawn_app(&[("signup", FLOW.to_owned())]).await;
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let url = receiver.url("/hooks");
    let args = ["webhooks", "create", "--name", "Billing", "--url", &url];
    let (stdout, stderr, code) = cli(&app, &args);
    assert_eq!(code, 0, "{stderr}");
    let created: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let hook = created["id"].as_str().unwrap();
    let response = app.post_json("signup", r#"{"fail": true}"#).await;
    let run_id = run_id(&response);
    app.record_when(&run_id, |r| r.status == "failed").await;

    let phone = Browser::open(&app, 390, 844).await;
    phone.check_phone_page("sign-in", "/console/sign-in").await;
    phone.sign_in(&app, Role::Ops).await;
    for (name, path) in [
        ("flows", "/console/flows".to_owned()),
        ("runs", "/console/runs".to_owned()),
        ("run", format!("/console/runs/{run_id}")),
        ("webhooks", "/console/webhooks".to_owned()),
        ("webhook", format!("/console/webhooks/{hook}")),
        ("audit", "/console/audit".to_owned()),
    ] {
        phone.check_phone_page(name, &path).await;
    }

    // By keyboard alone: Tab to the flow's Pause button and press Enter.
    let laptop = Browser::open(&app, 1280, 800).await;
    laptop.sign_in(&app, Role::Ops).await;
    let tab = String::from(char::from(fantoccini::key::Key::Tab));
    let mut reached = false;
    for _ in 0..60 {
        laptop
            .client
            .active_element()
            .await
            .unwrap()
            .send_keys(&tab)
            .await
            .unwrap();
        let focused = laptop
            .js("return document.activeElement.textContent.trim();")
            .await;
        if focused == json!("Pause") {
            reached = true;
            break;
        }
    }
    assert!(reached, "Tab never reached the Pause button");
    let page = laptop.client.find(Locator::Css("html")).await.unwrap();
    let enter = String::from(char::from(fantoccini::key::Key::Enter));
    laptop
        .client
        .active_element()
        .await
        .unwrap()
        .send_keys(&enter)
        .await
        .unwrap();
    for _ in 0..100 {
        if page.tag_name().await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    laptop.wait_for("main").await;
    let paused = app.post_json("signup", "{}").await;
    assert_eq!(paused.text().await.unwrap(), PAUSED_BODY);
}

crate::on_all_backends!(
    browser_every_page_fits_a_phone_labels_its_controls_and_works_by_keyboard,
    browser_signs_in_with_a_link_and_pauses_a_flow,
    browser_shows_a_failed_runs_step_error_and_sender_html_as_text,
    browser_creates_a_webhook_and_views_its_ping,
    browser_viewer_sees_no_actions_and_a_cross_site_form_is_refused,
);
