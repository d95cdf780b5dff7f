//! The web console over HTTP, as a browser without JavaScript sees it:
//! sign-in and its cookie, what each role sees and may do, forged and
//! cross-site posts, the debugger's escaping, and webhooks from forms.

use std::time::Duration;

use flowgate::error::PAUSED_BODY;
use flowgate::token::{ConsoleUse, Role};

use crate::helpers::*;

const FLOW: &str = r#"
status = "live"
[trigger]
ref = "web1"
[response]
body_inline = '{"ok": true}'
[[steps]]
ref = "check"
kind = "fail"
if = "web1.fail"
message = "refused {{ web1.name }}"
"#;

/// A browser of the console: no redirects followed, its cookie kept by hand.
struct Browser<'a> {
    app: &'a TestApp,
    client: reqwest::Client,
    cookie: Option<String>,
}

impl<'a> Browser<'a> {
    fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.app.addr)
    }

    /// Signs in with a console token of `purpose` (a link, or a session
    /// made elsewhere) for `role`; the sign-in answer.
    async fn sign_in(&mut self, field: &str, token: &str) -> reqwest::Response {
        let response = self
            .client
            .post(format!("{}/console/sign-in", self.origin()))
            .header("origin", self.origin())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encoded(&[(field, token)]))
            .send()
            .await
            .unwrap();
        if let Some(set) = response.headers().get("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap().to_owned();
            self.cookie = Some(pair);
        }
        response
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.origin()));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        request.send().await.unwrap()
    }

    async fn page(&self, path: &str) -> String {
        let response = self.get(path).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "{path}: {text}");
        text
    }

    /// The form token of the page at `path`.
    async fn csrf(&self, path: &str) -> String {
        let page = self.page(path).await;
        let at = page.find("name=\"_csrf\" value=\"").expect("a form") + 20;
        page[at..at + 32].to_owned()
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}{path}", self.origin()))
            .header("origin", self.origin())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encoded(form));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        request.send().await.unwrap()
    }
}

/// `pairs` as a form body.
fn encoded(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn link(app: &TestApp, role: Role) -> String {
    app.keys
        .issue_console("alice", role, Duration::from_secs(600), ConsoleUse::Link)
        .unwrap()
}

async fn signed_in(app: &TestApp, role: Role) -> Browser<'_> {
    let mut browser = Browser::new(app);
    let response = browser.sign_in("link", &link(app, role)).await;
    assert_eq!(response.status(), 303);
    browser
}

async fn console_sign_in_with_a_one_time_link_sets_a_strict_cookie_and_signs_out() {
    let app = spawn_app(&[("f", FLOW.to_owned())]).await;
    // The CLI prints the link; its code rides after `#`.
    let (stdout, stderr, code) = cli(&app, &["console-link", "--role", "ops"]);
    assert_eq!(code, 0, "{stderr}");
    let printed = stdout.trim();
    assert!(printed.contains("/console/sign-in#link="), "{printed}");
    let code = printed.split("#link=").nth(1).unwrap();

    // Not signed in: pages send to the sign-in page, which names both ways in.
    let mut browser = Browser::new(&app);
    let response = browser.get("/console/runs").await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/console/sign-in");
    let sign_in = browser.page("/console/sign-in").await;
    assert!(
        sign_in.contains("flowgate console-link --role ops"),
        "{sign_in}"
    );

    let response = browser.sign_in("link", code).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/console/flows");
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let max_age: u64 = cookie.split("Max-Age=").nth(1).unwrap().parse().unwrap();
    assert!(max_age > 11 * 3600 && max_age <= 12 * 3600, "{cookie}");

    // The session is for the console only: not an admin API bearer.
    let session = browser.cookie.clone().unwrap();
    let bearer = session.split_once('=').unwrap().1;
    let api = app
        .client
        .get(format!("http://{}/v1/admin/flows", app.addr))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);

    // Signed in: the flows page, with the console's security headers.
    let response = browser.get("/console/flows").await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");
    let page = response.text().await.unwrap();
    assert!(
        page.contains("&#x2f;v1&#x2f;flow-webhook&#x2f;f") && page.contains("cli:alice"),
        "{page}"
    );

    // The link works once.
    let mut again = Browser::new(&app);
    let response = again.sign_in("link", code).await;
    assert_eq!(response.status(), 401);
    assert!(response.text().await.unwrap().contains("used already"));
    // Eight sign-ins racing with one fresh link open one session.
    let fresh = link(&app, Role::Ops);
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let request = Browser::new(&app)
            .client
            .post(format!("http://{}/console/sign-in", app.addr))
            .header("origin", format!("http://{}", app.addr))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encoded(&[("link", fresh.as_str())]));
        racers.spawn(async move { request.send().await.unwrap().status().as_u16() });
    }
    let mut statuses = racers.join_all().await;
    statuses.sort_unstable();
    assert_eq!(statuses, [303, 401, 401, 401, 401, 401, 401, 401]);

    // Behind a TLS proxy the cookie is Secure.
    let response = Browser::new(&app)
        .client
        .post(format!("http://{}/console/sign-in", app.addr))
        .header("x-forwarded-proto", "https")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encoded(&[("link", link(&app, Role::Viewer).as_str())]))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .ends_with("; Secure")
    );

    // Signing out ends the session everywhere, not only in this browser.
    let csrf = browser.csrf("/console/flows").await;
    let response = browser.post("/console/sign-out", &[("_csrf", &csrf)]).await;
    assert_eq!(response.status(), 303);
    assert!(
        response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let response = browser.get("/console/flows").await;
    assert_eq!(response.status(), 303, "the old cookie no longer works");
}

async fn console_a_pasted_admin_token_signs_in_and_bad_ones_say_why() {
    let app = spawn_app(&[("f", FLOW.to_owned())]).await;
    let mut browser = Browser::new(&app);
    let admin = app.keys.issue_admin("bob", Role::Author, None).unwrap();
    assert_eq!(browser.sign_in("token", &admin).await.status(), 303);
    let page = browser.page("/console/runs").await;
    assert!(page.contains("bob") && page.contains("author"), "{page}");

    for bad in [
        "not-a-token".to_owned(),
        app.keys.issue("f", None, 0).unwrap(),
        link(&app, Role::Ops),
    ] {
        let response = Browser::new(&app).sign_in("token", &bad).await;
        assert_eq!(response.status(), 401, "{bad}");
        let page = response.text().await.unwrap();
        assert!(page.contains("not a valid admin token"), "{page}");
        assert!(!page.contains(&bad), "the token is not echoed");
    }
}

async fn console_roles_decide_the_buttons_and_the_server_refuses_the_rest() {
    let app = spawn_app(&[("f", FLOW.to_owned())]).await;
    let viewer = signed_in(&app, Role::Viewer).await;
    let page = viewer.page("/console/flows").await;
    for button in ["Pause", "Rotate tokens", "New token"] {
        assert!(!page.contains(&format!(">{button}</button>")), "{button}");
    }
    // A viewer posting anyway is refused by the admin API's own rules.
    let csrf = viewer.csrf("/console/flows").await;
    let response = viewer
        .post(
            "/console/flows/f/pause",
            &[("_csrf", &csrf), ("_back", "/console/flows")],
        )
        .await;
    assert_eq!(response.status(), 403);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("needs the ops role")
    );

    let ops = signed_in(&app, Role::Ops).await;
    let page = ops.page("/console/flows").await;
    assert!(page.contains(">Pause</button>"), "{page}");
    let csrf = ops.csrf("/console/flows").await;
    // Forged: no form token, a wrong one, or from another site.
    for (form, origin) in [
        (vec![("_back", "/console/flows")], None),
        (vec![("_csrf", "0123456789abcdef0123456789abcdef")], None),
        (vec![("_csrf", csrf.as_str())], Some("http://evil.example")),
    ] {
        let mut request = ops
            .client
            .post(format!("http://{}/console/flows/f/pause", app.addr))
            .header("cookie", ops.cookie.clone().unwrap())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encoded(&form));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403, "{form:?} {origin:?}");
    }
    assert_eq!(
        app.post_json("f", "{}").await.status(),
        200,
        "nothing paused"
    );

    // The real button pauses the flow, and the trigger answers the paused body.
    let response = ops
        .post(
            "/console/flows/f/pause",
            &[("_csrf", &csrf), ("_back", "/console/flows")],
        )
        .await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/console/flows");
    let paused = app.post_json("f", "{}").await;
    assert_eq!(paused.status(), 200);
    assert_eq!(paused.text().await.unwrap(), PAUSED_BODY);
    let page = ops.page("/console/flows").await;
    assert!(
        page.contains(">Unpause</button>") && page.contains("override (file says live)"),
        "{page}"
    );
    let audit = ops.page("/console/audit?action=flow.pause").await;
    assert!(
        audit.contains("alice") && audit.contains("flow.pause"),
        "{audit}"
    );

    // A new token is shown once, and works.
    let response = ops
        .post(
            "/console/flows/f/tokens",
            &[("_csrf", &csrf), ("_back", "/console/flows"), ("ttl", "1h")],
        )
        .await;
    assert_eq!(response.status(), 200);
    let shown = response.text().await.unwrap();
    assert!(shown.contains("shown once"), "{shown}");
    let at = shown.find("readonly value=\"").unwrap() + 16;
    let token = &shown[at..at + shown[at..].find('"').unwrap()];
    let response = app
        .client
        .post(app.url("f"))
        .bearer_auth(token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the minted token is accepted");
}

async fn console_run_detail_shows_the_failing_step_and_escapes_what_senders_wrote() {
    let app = spawn_app(&[("f", FLOW.to_owned())]).await;
    let hostile = r#"<script>alert(1)</script>"><img src=x onerror=alert(2)>"#;
    let body = serde_json::json!({ "fail": true, "name": hostile }).to_string();
    let response = app.post_json("f", &body).await;
    assert_eq!(response.status(), 500);
    let run_id = run_id(&response);
    app.record_when(&run_id, |r| r.status == "failed").await;

    let browser = signed_in(&app, Role::Author).await;
    let runs = browser.page("/console/runs?flow=f&status=failed").await;
    assert!(runs.contains(&run_id), "{runs}");
    let page = browser.page(&format!("/console/runs/{run_id}")).await;
    assert!(page.contains("Step <strong>check</strong>"), "{page}");
    assert!(
        page.contains("refused &lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(!page.contains("<img src=x"), "{page}");
    assert!(page.contains(">Replay</button>"), "authors replay");
    assert!(!page.contains(">Abort</button>"), "the run ended");
    // Unknown runs and pages are the console's own 404 pages.
    let missing = browser.get("/console/runs/nope").await;
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("no run `nope`"));
}

async fn console_webhooks_are_created_from_the_form_and_their_log_opens() {
    let app = spawn_app(&[("f", FLOW.to_owned())]).await;
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let ops = signed_in(&app, Role::Ops).await;
    let empty = ops.page("/console/webhooks").await;
    assert!(empty.contains("No webhooks yet") && empty.contains("Create a webhook"));
    let csrf = ops.csrf("/console/webhooks").await;
    let url = receiver.url("/hooks");
    let response = ops
        .post(
            "/console/webhooks",
            &[
                ("_csrf", &csrf),
                ("_back", "/console/webhooks"),
                ("name", "Billing <b>"),
                ("url", &url),
                ("events", "*"),
                ("flows", ""),
                ("secret", "generate"),
                ("format", "json"),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);
    let shown = response.text().await.unwrap();
    assert!(
        shown.contains("whsec_") && shown.contains("Billing &lt;b&gt;"),
        "{shown}"
    );

    // Its ping arrives, and the delivery log shows it with the whole exchange.
    assert_eventually(Duration::from_secs(10), "the ping arrived", || {
        !receiver.requests().is_empty()
    })
    .await;
    let list = ops.page("/console/webhooks").await;
    let at = list.find("href=\"/console/webhooks/wh_").unwrap() + 6;
    let path = &list[at..at + list[at..].find('"').unwrap()];
    let mut page = String::new();
    for _ in 0..100 {
        page = ops.page(path).await;
        if page.contains("<code>ping</code>") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        page.contains("<code>ping</code>") && page.contains("<summary>View</summary>"),
        "{page}"
    );
    assert!(
        page.contains("webhook-signature"),
        "the request headers are shown"
    );
    // The edit form sets a flow filter, and emptying the field clears it.
    let flows_field = |page: &str| {
        let marker = "id=\"wh-flows\" name=\"flows\" value=\"";
        let at = page.find(marker).unwrap() + marker.len();
        page[at..at + page[at..].find('"').unwrap()].to_owned()
    };
    for flows in ["f", ""] {
        let csrf = ops.csrf(path).await;
        let edit = [
            ("_csrf", csrf.as_str()),
            ("_back", path),
            ("_method", "PATCH"),
            ("_lists", "events,flows,statuses"),
            ("events", "run.ended"),
            ("flows", flows),
        ];
        assert_eq!(ops.post(path, &edit).await.status(), 303);
        assert_eq!(flows_field(&ops.page(path).await), flows);
    }
    // Enabled: delete says why it cannot, and a viewer sees none of the buttons.
    assert!(page.contains("Disable it first"), "{page}");
    let viewer = signed_in(&app, Role::Viewer).await;
    let seen = viewer.page(path).await;
    for button in ["Disable", "Send ping", "Send test event", "Resend", "Save"] {
        assert!(!seen.contains(&format!(">{button}</button>")), "{button}");
    }
}

async fn console_runs_are_paged_by_cursor_newest_first() {
    let app = spawn_app(&[("f", FLOW.to_owned())]).await;
    let mut ids = Vec::new();
    for n in 0..55 {
        let response = app.post_json("f", &format!(r#"{{"n": {n}}}"#)).await;
        ids.push(run_id(&response));
    }
    for id in &ids {
        app.record_when(id, |r| r.status == "succeeded").await;
    }
    let browser = signed_in(&app, Role::Viewer).await;
    let first = browser.page("/console/runs?flow=f").await;
    let shown = |page: &str| ids.iter().filter(|id| page.contains(id.as_str())).count();
    assert_eq!(shown(&first), 50);
    assert!(
        first.contains(&ids[54]) && !first.contains(&ids[0]),
        "newest first"
    );
    let marker = "rel=\"next\" href=\"";
    let at = first.find(marker).expect("a next page") + marker.len();
    let next = first[at..at + first[at..].find('"').unwrap()]
        .replace("&amp;", "&")
        .replace("&#x2f;", "/");
    assert!(next.contains("flow=f&"), "filters kept: {next}");
    let second = browser.page(&next).await;
    assert_eq!(shown(&second), 5);
    assert!(second.contains(&ids[0]) && !second.contains("rel=\"next\""));
}

async fn console_pages_refresh_themselves_while_a_run_is_going() {
    let flow = r#"
status = "live"
[trigger]
ref = "web1"
mode = "async"
[[steps]]
ref = "nap"
kind = "delay"
if = "web1.slow"
duration = "1500ms"
"#;
    let app = spawn_app(&[("a", flow.to_owned())]).await;
    let response = app.post_json("a", r#"{"slow": true}"#).await;
    assert_eq!(response.status(), 202);
    let id = run_id(&response);
    app.record_when(&id, |r| r.status == "running").await;
    let refresh = "<meta http-equiv=\"refresh\"";
    let browser = signed_in(&app, Role::Viewer).await;
    let run = format!("/console/runs/{id}");
    for path in ["/console/runs", run.as_str()] {
        let page = browser.page(path).await;
        assert!(page.contains(refresh), "{path} while running: {page}");
    }
    app.record_when(&id, |r| r.status == "succeeded").await;
    for path in ["/console/runs", run.as_str()] {
        let page = browser.page(path).await;
        assert!(!page.contains(refresh), "{path} once ended: {page}");
    }
}

crate::on_both_backends!(
    console_pages_refresh_themselves_while_a_run_is_going,
    console_sign_in_with_a_one_time_link_sets_a_strict_cookie_and_signs_out,
    console_a_pasted_admin_token_signs_in_and_bad_ones_say_why,
    console_roles_decide_the_buttons_and_the_server_refuses_the_rest,
    console_run_detail_shows_the_failing_step_and_escapes_what_senders_wrote,
    console_webhooks_are_created_from_the_form_and_their_log_opens,
    console_runs_are_paged_by_cursor_newest_first,
);
