//! The sidecar's status pages in a real browser: headless Debian Chromium driven through
//! ChromeDriver (WebDriver, `fantoccini`) against a `sluice run` child process that runs the
//! shipped recipes (`recipes/`, `connectors/`) on the simulator, both shipped connections
//! (`intercom`, `intercom_backup`) pointed at it.
//!
//! Every click goes through the page (links and the pages' own forms, CSRF token and all);
//! the simulator's state and the sidecar's JSON API are the independent oracles. Screenshots
//! of every important step land in `target/test-output/browser/<test>/` for a person to
//! look at.
//!
//! Chromium and ChromeDriver must be installed (`scripts/test` installs Debian's `chromium`
//! and `chromium-driver` when it can): without them these tests fail, saying so.
//!
//! The tests take turns (one browser at a time: the machines have two cores), and nothing
//! sleeps for a fixed time where a condition can be polled, except to show that something
//! does *not* happen (a paused recipe's ticks).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use sluice::sim::{FailRule, Faults, Kind, SimConfig};

use crate::util::{root, SimEnv, Workspace};

/// How long a condition that should hold "within a few seconds" may take.
const SOON: Duration = Duration::from_secs(15);

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One browser at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------
// The browser.

/// A ChromeDriver process (in its own process group, with the Chromium it starts), one
/// WebDriver session and a folder for screenshots. Dropping it ends the session and kills
/// the process group.
struct Browser {
    client: Client,
    session: Option<String>,
    driver_url: String,
    // Dropped after the session is ended (fields drop in order).
    _driver: Driver,
    _profile: tempfile::TempDir,
    shots: PathBuf,
    shot_no: usize,
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A blocking `METHOD path` to `base` (`http://127.0.0.1:PORT`) over plain HTTP/1.1; the
/// status and body, or `None` when nothing answers.
fn http_blocking(base: &str, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    // Until the body named by Content-Length is in (ChromeDriver keeps the connection).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())
                    .flatten()
            });
            if len.is_some_and(|n| body.len() >= n) {
                let status = head.split_whitespace().nth(1)?.parse().ok()?;
                return Some((status, body.to_string()));
            }
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            let status = text.split_whitespace().nth(1)?.parse().ok()?;
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            return Some((status, body.to_string()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A ChromeDriver process group, killed on drop (by its id).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole process group: ChromeDriver and any Chromium left behind.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Browser {
    /// Starts ChromeDriver on a free port, waits for it to be ready and opens a session of
    /// headless Chromium with a fresh profile. Screenshots go to
    /// `target/test-output/browser/<test>/` (emptied first).
    async fn start(test: &str) -> Browser {
        for (bin, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: the browser tests need Debian's `{package}` package. \
                 `scripts/test` installs it (as root with apt-get); or run \
                 `apt-get install chromium chromium-driver`"
            );
        }
        let shots = root().join("target/test-output/browser").join(test);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).unwrap();

        let port = free_port();
        let driver_url = format!("http://127.0.0.1:{port}");
        let driver_log = shots.join("chromedriver.log");
        let mut driver = Driver({
            use std::os::unix::process::CommandExt;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", driver_log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group: Chromium's processes are killed with it.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("start {CHROMEDRIVER}: {e}"))
        });
        let deadline = Instant::now() + SOON;
        loop {
            if let Some(st) = driver.0.try_wait().unwrap() {
                panic!(
                    "chromedriver exited at start ({st}):\n{}",
                    std::fs::read_to_string(&driver_log).unwrap_or_default()
                );
            }
            let ready = tokio::task::spawn_blocking({
                let u = driver_url.clone();
                move || http_blocking(&u, "GET", "/status")
            })
            .await
            .unwrap()
            .and_then(|(code, body)| (code == 200).then_some(body))
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
            .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver on port {port} not ready after {SOON:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,1600",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        // Both of rustls' providers are built in (see Cargo.toml): name one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps)
            .connect(&driver_url)
            .await;
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                panic!(
                    "no WebDriver session with {CHROMIUM}: {e}\nchromedriver's log:\n{}",
                    std::fs::read_to_string(&driver_log).unwrap_or_default()
                );
            }
        };
        let session = client.session_id().await.ok().flatten();
        Browser {
            client,
            session,
            driver_url,
            _driver: driver,
            _profile: profile,
            shots,
            shot_no: 0,
        }
    }

    /// Saves a screenshot of the viewport as `NN-name.png`.
    async fn shot(&mut self, name: &str) {
        self.shot_no += 1;
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot `{name}`: {e}"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let file = self.shots.join(format!("{:02}-{name}.png", self.shot_no));
        std::fs::write(&file, png).unwrap();
    }

    async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The path of the page shown, percent-decoded.
    async fn page_path(&self) -> String {
        decoded(self.client.current_url().await.unwrap().path())
    }

    /// The path (and query) of the page shown.
    async fn path(&self) -> String {
        let u = self.client.current_url().await.unwrap();
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        }
    }

    async fn all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find_all `{css}`: {e}"))
    }

    /// The one element `css` matches now; panics naming the page when there is none.
    async fn one(&self, css: &str) -> Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => panic!(
                "no `{css}` on {} ({e}); the page:\n{}",
                self.path().await,
                self.source().await
            ),
        }
    }

    /// Whether `css` matches anything now.
    async fn has(&self, css: &str) -> bool {
        !self.all(css).await.is_empty()
    }

    async fn source(&self) -> String {
        self.client.source().await.unwrap_or_default()
    }

    /// Clicks the submit button of the form `form_css` (the page's own form: its hidden
    /// inputs go along) and waits for the next page to load.
    async fn submit(&self, form_css: &str) {
        let form = self.one(form_css).await;
        let button = match form.find(Locator::Css("button, input[type=submit]")).await {
            Ok(b) => b,
            Err(e) => panic!(
                "`{form_css}` has no submit button ({e}): {}",
                form.html(false).await.unwrap_or_default()
            ),
        };
        button.click().await.unwrap();
        self.wait_for_load(&form).await;
    }

    /// Clicks a link and waits for the next page.
    async fn follow(&self, link: &Element) {
        link.click().await.unwrap();
        self.wait_for_load(link).await;
    }

    /// Waits until `old` (an element of the page before) is gone and the new page has
    /// loaded.
    async fn wait_for_load(&self, old: &Element) {
        let deadline = Instant::now() + SOON;
        loop {
            // A stale element: the old document is gone.
            let stale = old.text().await.is_err();
            if stale {
                let state = self
                    .client
                    .execute("return document.readyState", vec![])
                    .await
                    .ok();
                if state == Some(json!("complete")) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no new page after {SOON:?}; still at {}",
                self.path().await
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until every image of the page has loaded or failed (so that an `onerror`
    /// handler would have run) and the page has had a moment to run timers.
    async fn settle(&self) {
        let deadline = Instant::now() + SOON;
        loop {
            let done = self
                .client
                .execute(
                    "return document.readyState === 'complete' && \
                     Array.from(document.images).every(i => i.complete)",
                    vec![],
                )
                .await
                .unwrap();
            if done == json!(true) {
                break;
            }
            assert!(Instant::now() < deadline, "images still loading");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // Two animation frames: queued error events and zero-delay timers have run.
        self.client
            .execute_async(
                "const done = arguments[0]; \
                 requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(done, 0)));",
                vec![],
            )
            .await
            .unwrap();
    }

    /// Every POST form of the page carries a hidden, non-empty token (CSRF); how many forms.
    async fn post_forms_carry_a_token(&self) -> usize {
        let forms = self.all("form").await;
        let mut n = 0;
        for f in &forms {
            let method = f.attr("method").await.unwrap().unwrap_or_default();
            if !method.eq_ignore_ascii_case("post") {
                continue;
            }
            n += 1;
            let mut token = false;
            for i in f
                .find_all(Locator::Css("input[type='hidden']"))
                .await
                .unwrap()
            {
                let v = i.prop("value").await.unwrap().unwrap_or_default();
                token |= v.len() >= 16;
            }
            assert!(
                token,
                "a POST form without a hidden token on {}: {}",
                self.path().await,
                f.html(false).await.unwrap_or_default()
            );
        }
        n
    }

    /// `window.__pwned` (null when nothing set it).
    async fn pwned(&self) -> Value {
        self.client
            .execute(
                "return window.__pwned === undefined ? null : window.__pwned",
                vec![],
            )
            .await
            .unwrap()
    }

    /// Ends the session (Chromium quits) and ChromeDriver.
    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        self.session = None;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            let _ = http_blocking(&self.driver_url, "DELETE", &format!("/session/{id}"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The sidecar over the shipped recipes.

/// A simulator whose clock runs from now (empty), and a workspace whose `intercom` and
/// `intercom_backup` connections both point at it, with the shipped recipes copied into its
/// `recipes/` (plus `extra` test recipes).
async fn shipped_env(extra: &[&str]) -> SimEnv {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let handle = sluice::sim::Sim::start(SimConfig {
        start_time: now,
        frozen_clock: false,
        ..SimEnv::config(0, 0, 0, 0)
    })
    .await
    .expect("start simulator");
    let conn = |name: &str| {
        format!(
            "  {name}:\n    connector: intercom\n    base_url: {}\n    token: ${{env:INTERCOM_TOKEN}}\n    retry: {{max_attempts: 2, base_delay_ms: 5, max_delay_ms: 20, max_rate_limit_waits: 2}}\n",
            handle.base_url
        )
    };
    let ws = Workspace::new(&format!(
        "connections:\n{}{}",
        conn("intercom"),
        conn("intercom_backup")
    ));
    let env = SimEnv { handle, ws };
    let recipes = env.ws.path().join("recipes");
    std::fs::create_dir_all(&recipes).unwrap();
    for f in shipped_recipe_files() {
        std::fs::copy(&f, recipes.join(f.file_name().unwrap())).unwrap();
    }
    for r in extra {
        env.write_recipe(r);
    }
    env
}

/// `recipes/*.yaml` of the repository.
fn shipped_recipe_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the shipped recipes: {files:?}");
    files
}

/// `RECIPE@CONNECTION` of every shipped recipe, read from the files themselves.
fn shipped_instances() -> Vec<String> {
    let mut out = Vec::new();
    for f in shipped_recipe_files() {
        let v: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let id = v["id"].as_str().unwrap().to_string();
        match &v["connections"] {
            serde_yaml::Value::Sequence(cs) => {
                for c in cs {
                    out.push(format!("{id}@{}", c.as_str().unwrap()));
                }
            }
            serde_yaml::Value::Null => {
                out.push(format!("{id}@{}", v["connection"].as_str().unwrap()))
            }
            other => panic!(
                "{}: `connections: {other:?}` (by label): name its instances here",
                f.display()
            ),
        }
    }
    out.sort();
    out
}

/// A `sluice run --listen 127.0.0.1:0` child process, killed on drop.
struct Sidecar {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    base: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Sidecar {
    async fn start(env: &SimEnv) -> Sidecar {
        let ws = env.ws.path();
        let state = ws.join("state");
        let discovery = state.join("sidecar.json");
        let log = ws.join("sidecar.log");
        let mut c = env.cmd(&["run", "--listen", "127.0.0.1:0"]);
        c.arg("--connectors")
            .arg(root().join("connectors"))
            .arg("--recipes")
            .arg(ws.join("recipes"))
            .arg("--state-dir")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = c.spawn().expect("start the sidecar");
        let pid = child.id();
        let deadline = Instant::now() + SOON;
        let listen = loop {
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "the sidecar exited at start ({st}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let found = std::fs::read_to_string(&discovery)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .filter(|v| v["pid"] == json!(pid));
            if let Some(v) = found {
                break v["listen"].as_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "no {}", discovery.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Sidecar {
            child,
            base: format!("http://{listen}"),
            log,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET /api/status`: the instance `name`.
    async fn instance(&self, name: &str) -> Value {
        let r = self
            .http
            .get(self.url("/api/status"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /api/status: {e}\n{}", self.log()));
        let v: Value = r.json().await.unwrap();
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["instance"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no instance {name} in {v}"))
    }

    /// `GET /api/dead-letters`.
    async fn dead_letters(&self) -> Vec<Value> {
        let r = self
            .http
            .get(self.url("/api/dead-letters"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap().as_array().unwrap().clone()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-decoded (the `@` of an instance may come as `%40` in a link).
fn decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The path of a link's `href` (absolute or not), percent-decoded.
fn href_path(href: &str) -> String {
    let path = match href.find("://") {
        Some(i) => href[i + 3..].find('/').map_or("/", |j| &href[i + 3 + j..]),
        None => href,
    };
    decoded(path)
}

/// A contact created now on the simulator; its id.
fn contact(env: &SimEnv, email: &str, name: &str) -> String {
    env.sim()
        .create(
            Kind::Contact,
            json!({"email": email, "name": name, "role": "user"}),
        )
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until the simulator's clock is more than a whole second past `created_at`: a
/// poll stops at the server's "now" in whole seconds, which the client reckons from its own
/// clock and an offset read off `Date` headers (whole seconds too), so up to a second behind
/// the server; a record of that very second is the next cycle's.
async fn past(env: &SimEnv, kind: Kind, id: &str) {
    let created = env.sim().record(kind, id).unwrap()["created_at"]
        .as_i64()
        .unwrap();
    crate::util::eventually(
        "the simulator's clock two seconds past the record",
        SOON,
        String::new,
        || async { (env.sim().now() > created + 1).then_some(()) },
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// The tests.

/// The positive control for the script checks below: the same payload put into a page
/// unescaped does run in this browser, and `window.__pwned` shows it. Without this, "nothing
/// ran" could mean the check cannot see anything.
const PAYLOAD: &str = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>&amp;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_the_script_check_sees_a_script_that_runs() {
    let _turn = TURN.lock().await;
    let mut b = Browser::start("script-check").await;
    let page = format!("<!doctype html><html><body><p>{PAYLOAD}</p></body></html>");
    let url = format!(
        "data:text/html,{}",
        percent_encoding::utf8_percent_encode(&page, percent_encoding::NON_ALPHANUMERIC)
    );
    b.goto(&url).await;
    b.settle().await;
    b.shot("unescaped-payload").await;
    let seen = b.pwned().await;
    assert!(
        seen == json!(1) || seen == json!(2),
        "an unescaped payload runs and sets window.__pwned: {seen}"
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_the_overview_lists_every_shipped_recipe_and_connection() {
    let _turn = TURN.lock().await;
    let env = shipped_env(&[]).await;
    let sc = Sidecar::start(&env).await;
    let mut b = Browser::start("overview").await;
    b.goto(&sc.url("/")).await;
    b.shot("overview").await;

    let want = shipped_instances();
    let mut rows = Vec::new();
    for tr in b.all("table#recipes tr[data-instance]").await {
        let instance = tr.attr("data-instance").await.unwrap().unwrap();
        let state = tr
            .find(Locator::Css("td.state"))
            .await
            .unwrap_or_else(|e| panic!("{instance}: no td.state ({e})"))
            .text()
            .await
            .unwrap();
        let href = tr
            .find(Locator::Css("a.recipe-link"))
            .await
            .unwrap_or_else(|e| panic!("{instance}: no a.recipe-link ({e})"))
            .attr("href")
            .await
            .unwrap()
            .unwrap_or_default();
        rows.push((instance, state.trim().to_string(), href_path(&href)));
    }
    let mut listed: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    listed.sort();
    assert_eq!(listed, want, "one row per shipped recipe instance");
    for (instance, state, href) in &rows {
        // Nothing has run yet, unless one of the shipped schedules' slots (minutes apart)
        // came since the start; nothing is failing, paused or broken.
        assert!(
            state == "never run" || state == "ok",
            "{instance}: state {state:?}"
        );
        assert_eq!(href, &format!("/recipes/{instance}"), "{instance}'s link");
    }
    let mut connections = Vec::new();
    for tr in b.all("table#connections tr[data-connection]").await {
        connections.push(tr.attr("data-connection").await.unwrap().unwrap());
    }
    connections.sort();
    assert_eq!(connections, ["intercom", "intercom_backup"]);
    assert!(
        !b.source().await.contains(crate::util::TOKEN),
        "the page shows no credential"
    );

    // A recipe's link leads to its page.
    let link = b
        .one("table#recipes tr[data-instance='new_contact_welcome@intercom'] a.recipe-link")
        .await;
    b.follow(&link).await;
    b.shot("recipe-page").await;
    assert_eq!(
        decoded(&b.path().await),
        "/recipes/new_contact_welcome@intercom"
    );
    assert!(b.has("form.pause").await, "a running recipe offers pause");
    assert!(!b.has("form.resume").await, "and no resume");
    assert!(b.has("form.run-now").await);
    assert_eq!(b.post_forms_carry_a_token().await, 2, "pause and run now");
    assert!(b.has("svg#chart").await);
    for tr in b.all("table#runs tr.run").await {
        // Only a scheduled slot, should one have come since the start.
        assert_eq!(
            tr.attr("data-kind").await.unwrap().as_deref(),
            Some("scheduled")
        );
    }
    b.close().await;
}

/// The onboarding ticket step of `new_contact_welcome` (`POST /tickets`) fails for good
/// (422) until the faults are cleared. (The rule's prefix also fails other recipes' polls
/// of `POST /tickets/search`, should one of their slots come: that makes no dead letter.)
fn fail_tickets(env: &SimEnv) {
    env.sim().set_faults(Faults {
        fail_next: vec![FailRule {
            code: Some("parameter_invalid".into()),
            message: Some("Ticket type 102 is archived (injected)".into()),
            count: 1000,
            ..FailRule::once(Some("POST"), "/tickets", 422)
        }],
        ..Faults::default()
    });
}

/// The tickets `new_contact_welcome` opened ("Onboard …").
fn onboarding_tickets(env: &SimEnv) -> Vec<Value> {
    env.sim()
        .records(Kind::Ticket)
        .into_iter()
        .filter(|t| {
            t["ticket_attributes"]["_default_title_"]
                .as_str()
                .is_some_and(|s| s.starts_with("Onboard "))
        })
        .collect()
}

/// Successful calls with this method and path.
fn calls(env: &SimEnv, method: &str, path: &str) -> usize {
    env.sim()
        .audit()
        .iter()
        .filter(|e| e.method == method && e.path == path && e.status > 0 && e.status < 300)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_a_dead_letter_shows_its_error_and_replays_into_a_finished_run() {
    let _turn = TURN.lock().await;
    let env = shipped_env(&[]).await;
    let sc = Sidecar::start(&env).await;
    let mut b = Browser::start("dead-letter").await;
    let instance = "new_contact_welcome@intercom";

    // A new user whose onboarding ticket cannot be created; the recipe runs now, from its
    // page. The name is a script: it must show as text, and not run.
    // The dead letter is listed with its error.
    let (id, letter) = run_now_into_a_dead_letter(
        (&env, &mut b, &sc),
        instance,
        ("dl@x.io", PAYLOAD),
        "after-run-now",
    )
    .await;
    b.shot("dead-letters").await;
    assert_eq!(b.all("table#dead-letters tr[data-id]").await.len(), 1);
    assert!(b.has("form.replay-all").await);
    assert_eq!(b.post_forms_carry_a_token().await, 1, "replay all");
    let api = sc.dead_letters().await;
    assert_eq!(api.len(), 1, "{api:?}");
    assert_eq!(
        api[0]["id"].to_string(),
        letter,
        "the page's id is the API's"
    );
    let row = format!("table#dead-letters tr[data-id='{letter}']");
    let error = b
        .one(&format!("{row} td.error"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        error.contains("Ticket type 102 is archived (injected)"),
        "the list shows the error: {error:?}"
    );

    // The filter form narrows the list by text (a GET: the page is its own link).
    for (q, rows) in [("no such text", 0), ("archived", 1)] {
        let input = b.one("form#filter input[name='q']").await;
        input.clear().await.unwrap();
        input.send_keys(q).await.unwrap();
        b.submit("form#filter").await;
        b.shot(&format!("filtered-{rows}")).await;
        assert_eq!(
            b.all("table#dead-letters tr[data-id]").await.len(),
            rows,
            "dead letters matching {q:?}"
        );
        let input = b.one("form#filter input[name='q']").await;
        assert_eq!(input.prop("value").await.unwrap().as_deref(), Some(q));
    }

    // Its page: the error, the record (the script as text), nothing ran.
    let link = b.one(&format!("{row} a.letter-link")).await;
    assert_eq!(
        href_path(&link.attr("href").await.unwrap().unwrap()),
        format!("/dead-letters/{letter}")
    );
    b.follow(&link).await;
    b.settle().await;
    b.shot("dead-letter-detail").await;
    let error = b.one(".error").await.text().await.unwrap();
    assert!(
        error.contains("Ticket type 102 is archived (injected)"),
        "the detail shows the error: {error:?}"
    );
    assert!(b.has("form.drop").await);
    assert_eq!(b.post_forms_carry_a_token().await, 2, "replay and drop");
    let record = b.one("pre.record").await.text().await.unwrap();
    assert!(record.contains(&id), "the record's JSON: {record}");
    assert_eq!(b.pwned().await, Value::Null, "a script in a record ran");
    assert!(
        record.contains(PAYLOAD),
        "the name shows as text, as it was: {record}"
    );
    assert!(b.all("pre.record script, pre.record img").await.is_empty());

    // Replay once the cause is gone: it finishes from the failed step.
    env.sim().set_faults(Faults::default());
    b.submit("form.replay").await;
    b.shot("after-replay").await;
    assert_eq!(b.page_path().await, format!("/recipes/{instance}"));
    let flash = b.one("p.flash").await.text().await.unwrap();
    assert!(flash.contains("finished"), "the flash: {flash:?}");
    let tickets = onboarding_tickets(&env);
    assert_eq!(tickets.len(), 1, "the onboarding ticket: {tickets:?}");
    assert_eq!(
        calls(&env, "POST", "/conversations"),
        1,
        "the steps before the failed one are not sent again"
    );
    let replays = b
        .all("table#runs tr.run[data-kind='replay'][data-outcome='ok']")
        .await;
    assert_eq!(replays.len(), 1, "the recipe's runs show the replay");
    // Its run page: the record finished, with the step it resumed at.
    let link = replays[0].find(Locator::Css("a.run-link")).await.unwrap();
    b.follow(&link).await;
    b.shot("replay-run").await;
    let records = b.all("table#records tr.record").await;
    assert_eq!(records.len(), 1, "the replayed record");
    assert_eq!(
        records[0].attr("data-outcome").await.unwrap().as_deref(),
        Some("finished")
    );
    let row = records[0].text().await.unwrap();
    assert!(row.contains(&id), "the record's key: {row}");
    assert!(row.contains("onboarding"), "the step run: {row}");

    // Gone from the list.
    b.goto(&sc.url("/dead-letters")).await;
    b.shot("dead-letters-after-replay").await;
    assert!(
        b.all("table#dead-letters tr[data-id]").await.is_empty(),
        "no dead letters left"
    );
    assert!(sc.dead_letters().await.is_empty());
    assert_eq!(b.pwned().await, Value::Null);

    // A second dead letter, dropped from its page: gone, and never replayed.
    let (second, letter) = run_now_into_a_dead_letter(
        (&env, &mut b, &sc),
        instance,
        ("drop@x.io", "Dropped Person"),
        "after-second-run-now",
    )
    .await;
    env.sim().set_faults(Faults::default());
    let link = b
        .one(&format!(
            "table#dead-letters tr[data-id='{letter}'] a.letter-link"
        ))
        .await;
    b.follow(&link).await;
    let record = b.one("pre.record").await.text().await.unwrap();
    assert!(record.contains(&second), "{record}");
    b.submit("form.drop").await;
    b.shot("after-drop").await;
    assert_eq!(b.page_path().await, "/dead-letters");
    let flash = b.one("p.flash").await.text().await.unwrap();
    assert!(flash.contains("dropped"), "the flash: {flash:?}");
    assert!(
        b.all("table#dead-letters tr[data-id]").await.is_empty(),
        "the dropped letter is gone"
    );
    assert!(sc.dead_letters().await.is_empty());
    assert_eq!(
        onboarding_tickets(&env).len(),
        1,
        "the dropped record got no ticket"
    );
    b.close().await;
}

/// A recipe on `every: 1s` that notes each new contact: every slot makes a cycle.
const TICK: &str = "id: tick\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1s\nstart_from: \"2020-01-01\"\nsteps:\n  - id: note\n    action: intercom.add_note_to_contact\n    with:\n      contact_id: \"{{record.id}}\"\n      body: \"tick\"\n";

/// The href of the newest run's link on the recipe page shown, and how many runs it lists.
/// A new contact (email, name) whose onboarding ticket cannot be created; "Run now" on the
/// recipe's page, a screenshot named `shot`; the first dead letter listed once one is. The
/// contact's id and the letter's.
async fn run_now_into_a_dead_letter(
    (env, b, sc): (&SimEnv, &mut Browser, &Sidecar),
    instance: &str,
    (email, name): (&str, &str),
    shot: &str,
) -> (String, String) {
    fail_tickets(env);
    let id = contact(env, email, name);
    past(env, Kind::Contact, &id).await;
    b.goto(&sc.url(&format!("/recipes/{instance}"))).await;
    b.submit("form.run-now").await;
    b.shot(shot).await;
    let b = &*b;
    let letter = crate::util::eventually(
        "a dead letter on the page",
        SOON,
        || sc.log(),
        || async {
            b.goto(&sc.url("/dead-letters")).await;
            match b.all("table#dead-letters tr[data-id]").await.first() {
                Some(r) => Some(r.attr("data-id").await.unwrap().unwrap()),
                None => None,
            }
        },
    )
    .await;
    (id, letter)
}

async fn newest_run(b: &Browser) -> (Option<String>, usize) {
    let runs = b.all("table#runs tr.run").await;
    let newest = match runs.first() {
        Some(r) => r
            .find(Locator::Css("a.run-link"))
            .await
            .unwrap()
            .attr("href")
            .await
            .unwrap(),
        None => None,
    };
    (newest, runs.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_pause_stops_a_recipes_ticks_and_resume_restarts_them() {
    let _turn = TURN.lock().await;
    let env = shipped_env(&[TICK]).await;
    let sc = Sidecar::start(&env).await;
    let mut b = Browser::start("pause").await;
    let instance = "tick@intercom";
    let page = sc.url(&format!("/recipes/{instance}"));

    // Running: its runs grow.
    let first = crate::util::eventually(
        "a run of tick on its page",
        SOON,
        || sc.log(),
        || async {
            b.goto(&page).await;
            newest_run(&b).await.0
        },
    )
    .await;
    crate::util::eventually(
        "a second run of tick",
        SOON,
        || sc.log(),
        || async {
            b.goto(&page).await;
            newest_run(&b).await.0.filter(|n| *n != first)
        },
    )
    .await;
    b.shot("running").await;

    // Pause from the page.
    b.submit("form.pause").await;
    b.shot("paused").await;
    assert!(b.has("form.resume").await, "a paused recipe offers resume");
    assert!(!b.has("form.pause").await, "and no pause");
    // A cycle under way when the button was pressed may still end.
    crate::util::eventually(
        "tick idle",
        SOON,
        || sc.log(),
        || async {
            let i = sc.instance(instance).await;
            (i["paused"] == true && i["running"] == false).then_some(())
        },
    )
    .await;
    b.goto(&page).await;
    let (before, n_before) = newest_run(&b).await;
    let api_before = sc.instance(instance).await["last"]["started_at_ms"].clone();
    // Three of its slots pass: no run.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    b.goto(&page).await;
    let (after, n_after) = newest_run(&b).await;
    assert_eq!(
        (&after, n_after),
        (&before, n_before),
        "no run while paused"
    );
    assert_eq!(
        sc.instance(instance).await["last"]["started_at_ms"],
        api_before,
        "no cycle while paused"
    );
    b.goto(&sc.url("/")).await;
    b.shot("overview-paused").await;
    let state = b
        .one(&format!("tr[data-instance='{instance}'] td.state"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(state.trim(), "paused");

    // Resume: runs again.
    b.goto(&page).await;
    b.submit("form.resume").await;
    assert!(b.has("form.pause").await, "a resumed recipe offers pause");
    crate::util::eventually(
        "a run after resuming",
        SOON,
        || sc.log(),
        || async {
            b.goto(&page).await;
            newest_run(&b)
                .await
                .0
                .filter(|n| Some(n) != before.as_ref())
        },
    )
    .await;
    b.shot("resumed").await;
    b.goto(&sc.url("/")).await;
    let state = b
        .one(&format!("tr[data-instance='{instance}'] td.state"))
        .await
        .text()
        .await
        .unwrap();
    assert_ne!(state.trim(), "paused");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_a_script_in_a_record_shows_as_text_on_its_run_page_and_does_not_run() {
    let _turn = TURN.lock().await;
    let env = shipped_env(&[]).await;
    let sc = Sidecar::start(&env).await;
    let mut b = Browser::start("script").await;
    let instance = "new_contact_welcome@intercom";

    let id = contact(&env, "xss@x.io", PAYLOAD);
    past(&env, Kind::Contact, &id).await;
    b.goto(&sc.url(&format!("/recipes/{instance}"))).await;
    b.submit("form.run-now").await;
    b.shot("after-run-now").await;

    // The run that fired the record: a scheduled slot of the recipe may have come before the
    // click, so every run it lists is looked at; exactly one holds the record.
    let recipe_page = sc.url(&format!("/recipes/{instance}"));
    let fired = crate::util::eventually(
        "a run of the recipe with a record",
        SOON,
        || sc.log(),
        || async {
            b.goto(&recipe_page).await;
            let mut hrefs = Vec::new();
            for r in b.all("table#runs tr.run").await {
                let a = r.find(Locator::Css("a.run-link")).await.unwrap();
                hrefs.push(a.attr("href").await.unwrap().unwrap());
            }
            let mut with_records = Vec::new();
            for h in hrefs {
                b.goto(&sc.url(&href_path(&h))).await;
                if b.has("table#records tr.record").await {
                    with_records.push(h);
                }
            }
            (!with_records.is_empty()).then_some(with_records)
        },
    )
    .await;
    assert_eq!(fired.len(), 1, "the record fired in one run: {fired:?}");
    b.goto(&recipe_page).await;
    let link = b.one(&format!("a.run-link[href='{}']", fired[0])).await;
    b.follow(&link).await;
    b.settle().await;
    b.shot("run-page").await;
    let records = b.all("table#records tr.record").await;
    assert_eq!(records.len(), 1, "one record fired");
    assert_eq!(
        records[0].attr("data-outcome").await.unwrap().as_deref(),
        Some("finished")
    );
    // Each step's journal is folded (<details>): open them as a person would.
    let steps = b.all("table#records tr.record details > summary").await;
    assert_eq!(steps.len(), 3, "the recipe's three steps");
    for summary in &steps {
        summary.click().await.unwrap();
    }
    b.settle().await;
    b.shot("run-page-steps-open").await;
    let text = b.one("table#records").await.text().await.unwrap();
    assert!(
        text.contains(PAYLOAD),
        "the step's input shows the name as text, as it was: {text}"
    );
    assert_eq!(b.pwned().await, Value::Null, "a script in a record ran");
    assert!(
        b.all("table#records script, table#records img")
            .await
            .is_empty(),
        "no element made from the record"
    );
    b.close().await;
}
