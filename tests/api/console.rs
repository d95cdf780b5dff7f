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

    async fn page_status_ok(&self, path: &str) -> bool {
        self.get(path).await.status() == 200
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
    // A new token with the lifetime chosen in the form.
    let minted = ops
        .post(
            "/console/flows/f/tokens",
            &[
                ("_csrf", &csrf),
                ("_back", "/console/flows"),
                ("ttl", "30d"),
            ],
        )
        .await;
    assert_eq!(minted.status(), 200);
    let shown = minted.text().await.unwrap();
    assert!(
        shown.contains("30days") || shown.contains("30 days"),
        "{shown}"
    );
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
    // Replay goes to the run it made.
    let here = format!("/console/runs/{run_id}");
    let csrf = browser.csrf(&here).await;
    let replayed = browser
        .post(
            &format!("/console/runs/{run_id}/replay"),
            &[("_csrf", &csrf), ("_back", &here)],
        )
        .await;
    assert_eq!(replayed.status(), 303);
    let to = replayed.headers()["location"].to_str().unwrap().to_owned();
    assert!(to.starts_with("/console/runs/") && to != here, "{to}");
    // A sync replay writes its record just after answering.
    let mut new_run = String::new();
    for _ in 0..100 {
        let response = browser.get(&to).await;
        if response.status() == 200 {
            new_run = response.text().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(new_run.contains(&run_id), "it names the run it replays");
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
    // A run's events link to the run.
    let ran = run_id(&app.post_json("f", r#"{"name": "x"}"#).await);
    let link = format!("href=\"/console/runs/{ran}\"");
    for _ in 0..100 {
        page = ops.page(path).await;
        if page.contains(&link) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(page.contains(&link), "{page}");
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

/// An admin API call as `token`; its status and JSON.
async fn api(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = app
        .client
        .request(method, format!("http://{}/v1/admin/{path}", app.addr))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Waits until `browser`'s cookie no longer opens a page (within a second).
async fn signed_out_within_a_second(browser: &Browser<'_>) {
    let started = std::time::Instant::now();
    loop {
        let response = browser.get("/console/flows").await;
        if response.status() == 303 {
            // The sign-in page says why the session ended.
            assert_eq!(response.headers()["location"], "/console/sign-in?ended");
            let page = browser.page("/console/sign-in?ended").await;
            assert!(page.contains("Your session ended"), "{page}");
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the session still opens pages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn console_revoking_an_admin_token_ends_its_sessions_and_ops_see_and_end_sessions() {
    let app = spawn_app(&[("f", FLOW.to_owned())]).await;
    let ops = app.keys.issue_admin("ops-bot", Role::Ops, None).unwrap();
    let carol_token = app.keys.issue_admin("carol", Role::Ops, None).unwrap();
    let carol_jti = app.keys.verify_admin(&carol_token).unwrap().token_id;
    let mut carol = Browser::new(&app);
    assert_eq!(carol.sign_in("token", &carol_token).await.status(), 303);
    let linked = signed_in(&app, Role::Viewer).await;
    assert_eq!(carol.get("/console/flows").await.status(), 200);

    // Ops list both sessions, with what each was made from; lower roles may not.
    let (status, list) = api(&app, reqwest::Method::GET, "sessions", &ops, None).await;
    assert_eq!(status, 200, "{list}");
    let sessions = list["data"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{list}");
    let from_token = sessions
        .iter()
        .find(|s| s["from"]["kind"] == "token")
        .expect("carol's session");
    assert_eq!(from_token["subject"], "carol");
    assert_eq!(from_token["role"], "ops");
    assert_eq!(from_token["from"]["jti"], carol_jti.as_str());
    for field in ["id", "created_at", "expires_at"] {
        assert!(from_token[field].is_string(), "{field}: {from_token}");
    }
    let from_link = sessions
        .iter()
        .find(|s| s["from"]["kind"] == "link")
        .expect("the link's session");
    assert_eq!(from_link["role"], "viewer");
    let author = app.keys.issue_admin("dan", Role::Author, None).unwrap();
    let (status, _) = api(&app, reqwest::Method::GET, "sessions", &author, None).await;
    assert_eq!(status, 403);

    // Revoking carol's token ends the console session made from it: pages
    // send to sign-in and a forged-free post is refused.
    let csrf = carol.csrf("/console/flows").await;
    let (status, revoked) = api(
        &app,
        reqwest::Method::POST,
        "tokens/revoke",
        &ops,
        Some(serde_json::json!({ "token": carol_token })),
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    signed_out_within_a_second(&carol).await;
    let response = carol
        .post("/console/flows/f/pause", &[("_csrf", &csrf)])
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        app.app
            .control()
            .status(app.app.catalog().get().get("f").unwrap()),
        flowgate::flow::FlowStatus::Live,
        "the revoked session paused nothing"
    );
    // Signing in again with the revoked token is refused too.
    assert_eq!(
        Browser::new(&app)
            .sign_in("token", &carol_token)
            .await
            .status(),
        401
    );
    let (_, list) = api(&app, reqwest::Method::GET, "sessions", &ops, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");

    // Ending one session by id, from the API.
    let link_session = from_link["id"].as_str().unwrap().to_owned();
    let path = format!("sessions/{link_session}");
    let (status, _) = api(&app, reqwest::Method::DELETE, &path, &author, None).await;
    assert_eq!(status, 403, "authors may not end sessions");
    let (status, ended) = api(&app, reqwest::Method::DELETE, &path, &ops, None).await;
    assert_eq!(status, 200, "{ended}");
    signed_out_within_a_second(&linked).await;
    let (status, again) = api(&app, reqwest::Method::DELETE, &path, &ops, None).await;
    assert_eq!(status, 404, "{again}");
    assert_eq!(again["error"], "not_found");

    // From the CLI, and from the console's own Sessions page.
    let erin = signed_in(&app, Role::Ops).await;
    let frank = signed_in(&app, Role::Author).await;
    let (stdout, stderr, code) = cli(&app, &["sessions", "list", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let listed: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{stdout}");
    for field in ["created_at", "expires_at"] {
        assert!(
            listed[0][field].is_string(),
            "as the API shows it: {stdout}"
        );
    }
    assert_eq!(listed[0]["from"]["kind"], "link", "{stdout}");
    let frank_session = listed.iter().find(|s| s["role"] == "author").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let page = erin.page("/console/sessions").await;
    assert!(
        page.contains(&frank_session) && page.contains("this one"),
        "{page}"
    );
    let csrf = erin.csrf("/console/sessions").await;
    let response = erin
        .post(
            &format!("/console/sessions/{frank_session}"),
            &[
                ("_csrf", &csrf),
                ("_method", "DELETE"),
                ("_back", "/console/sessions"),
            ],
        )
        .await;
    assert_eq!(response.status(), 303);
    signed_out_within_a_second(&frank).await;
    assert!(!frank.page_status_ok("/console/sessions").await);
    let (stdout, _, _) = cli(&app, &["sessions", "list"]);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let erin_session = stdout.split_whitespace().next().unwrap().to_owned();
    let (_, stderr, code) = cli(&app, &["sessions", "revoke", &erin_session]);
    assert_eq!(code, 0, "{stderr}");
    signed_out_within_a_second(&erin).await;
    let (_, stderr, code) = cli(&app, &["sessions", "revoke", &erin_session]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no open console session"), "{stderr}");

    // Revoking a sign-in link's id ends the session it opened.
    let gina_link = link(&app, Role::Viewer);
    let link_jti = app
        .keys
        .verify_console(&gina_link, ConsoleUse::Link)
        .unwrap()
        .token_id;
    let mut gina = Browser::new(&app);
    assert_eq!(gina.sign_in("link", &gina_link).await.status(), 303);
    assert_eq!(gina.get("/console/flows").await.status(), 200);
    let (_, stderr, code) = cli(&app, &["token", "revoke", &link_jti]);
    assert_eq!(code, 0, "{stderr}");
    signed_out_within_a_second(&gina).await;

    // Every step is in the audit log, with who did it.
    let audit = app
        .admin_json("ops-bot", Role::Ops, "/v1/admin/audit?limit=250")
        .await;
    let entries = audit["data"].as_array().unwrap();
    let actions = |action: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == action)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(actions("session.open").len(), 5, "{audit}");
    // Using a link is its session's opening, not a revocation.
    let link_revocations: Vec<_> = actions("token.revoke")
        .into_iter()
        .filter(|e| e["actor"] == "alice")
        .collect();
    assert!(link_revocations.is_empty(), "{link_revocations:?}");
    let revoke = actions("token.revoke")
        .into_iter()
        .find(|e| e["after"]["jti"] == carol_jti.as_str())
        .expect("carol's token revoked");
    assert_eq!(
        revoke["after"]["sessions_ended"],
        serde_json::json!([from_token["id"]]),
        "{revoke}"
    );
    let ended = actions("session.revoke");
    assert_eq!(ended.len(), 3, "{audit}");
    assert!(ended.iter().any(|e| e["actor"] == "cli:alice"), "{audit}");
    assert!(ended.iter().any(|e| e["actor"] == "ops-bot"), "{audit}");
}

async fn console_one_token_holds_at_most_twenty_sessions_the_oldest_give_way() {
    let app = spawn_app(&[("f", FLOW.to_owned())]).await;
    let token = app.keys.issue_admin("v", Role::Viewer, None).unwrap();
    let mut browsers = Vec::new();
    for _ in 0..22 {
        let mut browser = Browser::new(&app);
        assert_eq!(browser.sign_in("token", &token).await.status(), 303);
        browsers.push(browser);
    }
    let ops = app.keys.issue_admin("ops", Role::Ops, None).unwrap();
    let (status, list) = api(&app, reqwest::Method::GET, "sessions?limit=250", &ops, None).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 20, "{list}");
    // The two oldest ended; the newest work.
    for (i, browser) in browsers.iter().enumerate() {
        let status = browser.get("/console/flows").await.status();
        assert_eq!(status, if i < 2 { 303 } else { 200 }, "session {i}");
    }
    // Ops can still sign in.
    assert_eq!(
        Browser::new(&app).sign_in("token", &ops).await.status(),
        303
    );
}

crate::on_all_backends!(
    console_one_token_holds_at_most_twenty_sessions_the_oldest_give_way,
    console_revoking_an_admin_token_ends_its_sessions_and_ops_see_and_end_sessions,
    console_pages_refresh_themselves_while_a_run_is_going,
    console_sign_in_with_a_one_time_link_sets_a_strict_cookie_and_signs_out,
    console_a_pasted_admin_token_signs_in_and_bad_ones_say_why,
    console_roles_decide_the_buttons_and_the_server_refuses_the_rest,
    console_run_detail_shows_the_failing_step_and_escapes_what_senders_wrote,
    console_webhooks_are_created_from_the_form_and_their_log_opens,
    console_runs_are_paged_by_cursor_newest_first,
);
