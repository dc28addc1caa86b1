//! Simulator tests: HTTP behaviour through reqwest against `Sim::start`, plus direct calls into
//! the request pipeline for the heavier paging checks. No real sleeps: time moves only through
//! the frozen simulator clock.

use std::collections::HashSet;

use axum::http::HeaderMap;
use serde_json::{json, Value};

use super::*;

/// 2024-07-01 12:00:00 UTC (13:00 in Dublin).
const T0: i64 = 1_719_835_200;

fn cfg() -> SimConfig {
    SimConfig {
        start_time: T0,
        frozen_clock: true,
        ..SimConfig::default()
    }
}

struct Client {
    h: SimHandle,
    c: reqwest::Client,
}

impl Client {
    async fn start(config: SimConfig) -> Client {
        Client {
            h: Sim::start(config).await.unwrap(),
            c: reqwest::Client::builder().build().unwrap(),
        }
    }

    fn sim(&self) -> &Sim {
        &self.h.sim
    }

    fn builder(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        self.c.request(m, format!("{}{}", self.h.base_url, path))
    }

    async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        body: Option<Value>,
    ) -> (u16, HeaderMap, Value) {
        let rb = match body {
            Some(b) => rb
                .header("content-type", "application/json")
                .body(b.to_string()),
            None => rb,
        };
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, headers, v)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let rb = self
            .builder(method, path)
            .header("authorization", "Bearer sim-token")
            .header("accept", "application/json")
            .header("intercom-version", "2.15");
        let (s, _, v) = self.send(rb, body).await;
        (s, v)
    }
}

fn err_code(v: &Value) -> &str {
    assert_eq!(v["type"], "error.list", "{v}");
    v["errors"][0]["code"].as_str().unwrap()
}

/// Calls the request pipeline directly (no HTTP).
fn direct(sim: &Sim, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut h = HeaderMap::new();
    h.insert("authorization", "Bearer sim-token".parse().unwrap());
    h.insert("accept", "application/json".parse().unwrap());
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let r = routes::intercom(&mut sim.lock(), method, path, query, &h, bytes.as_bytes());
    (
        r.status,
        r.body
            .map(|b| serde_json::from_str(&b).unwrap())
            .unwrap_or(Value::Null),
    )
}

async fn raw_status(base: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    sock.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    sock.read_to_string(&mut out).await.unwrap();
    out
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn auth_failures_get_401_without_rate_headers() {
    let t = Client::start(cfg()).await;
    for auth in [None, Some("Bearer wrong"), Some("Basic abc")] {
        let mut rb = t.builder("GET", "/me").header("accept", "application/json");
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        let (s, h, v) = t.send(rb, None).await;
        assert_eq!(s, 401);
        assert_eq!(err_code(&v), "unauthorized");
        assert_eq!(v["errors"][0]["message"], "Access Token Invalid");
        assert!(h.get("x-ratelimit-limit").is_none());
        assert!(h.get("date").is_some());
    }
    let audit = t.sim().audit();
    assert_eq!(audit.len(), 3);
    assert_eq!(audit[0].auth, AuthSeen::Missing);
    assert_eq!(audit[1].auth, AuthSeen::Invalid);
    assert!(!serde_json::to_string(&audit).unwrap().contains("wrong"));
}

#[tokio::test]
async fn header_checks_and_unknown_routes() {
    let t = Client::start(cfg()).await;
    // reqwest always sends `Accept: */*`, so the header-less request goes over a raw socket.
    let head = raw_status(&t.h.base_url, "GET /me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sim-token\r\nConnection: close\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 406"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-ratelimit-remaining"));
    let rb = t
        .builder("GET", "/me")
        .header("authorization", "Bearer sim-token")
        .header("accept", "text/html");
    assert_eq!(t.send(rb, None).await.0, 406);
    let rb = t
        .builder("GET", "/me")
        .header("authorization", "Bearer sim-token")
        .header("accept", "application/json")
        .header("intercom-version", "9.9");
    let (s, _, v) = t.send(rb, None).await;
    assert_eq!((s, err_code(&v)), (400, "intercom_version_invalid"));
    let (s, v) = t.call("GET", "/nope", None).await;
    assert_eq!((s, err_code(&v)), (404, "not_found"));
    let (s, v) = t.call("PATCH", "/contacts/abc", None).await;
    assert_eq!((s, err_code(&v)), (404, "not_found"));
    let rb = t
        .builder("POST", "/contacts")
        .header("authorization", "Bearer sim-token")
        .header("accept", "*/*")
        .body("{not json");
    let (s, _, v) = t.send(rb, None).await;
    assert_eq!((s, err_code(&v)), (400, "parameter_invalid"));
    let (s, me) = t.call("GET", "/me", None).await;
    assert_eq!(s, 200);
    assert_eq!(me["app"]["timezone"], "Europe/Dublin");
    assert_eq!(me["app"]["region"], "US");
    assert!(me["app"]["id_code"].is_string());
}

#[tokio::test]
async fn rate_limit_exhausts_and_resets_with_the_clock() {
    let t = Client::start(SimConfig {
        rate_limit_per_window: 3,
        ..cfg()
    })
    .await;
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let rb = t
            .builder("GET", "/me")
            .header("authorization", "Bearer sim-token")
            .header("accept", "application/json");
        let (s, h, _) = t.send(rb, None).await;
        assert_eq!(s, 200);
        assert_eq!(h["x-ratelimit-limit"], "3");
        assert_eq!(
            h["x-ratelimit-reset"].to_str().unwrap(),
            (T0 - T0 % 10 + 10).to_string()
        );
        assert_eq!(h["date"].to_str().unwrap(), "Mon, 01 Jul 2024 12:00:00 GMT");
        remaining.push(h["x-ratelimit-remaining"].to_str().unwrap().to_string());
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let rb = t
        .builder("GET", "/me")
        .header("authorization", "Bearer sim-token")
        .header("accept", "application/json");
    let (s, h, v) = t.send(rb, None).await;
    assert_eq!(s, 429);
    assert_eq!(err_code(&v), "rate_limit_exceeded");
    assert_eq!(
        v["errors"][0]["message"],
        "Exceeded rate limit of 3 in 10_seconds"
    );
    assert_eq!(h["x-ratelimit-remaining"], "0");
    t.sim().advance_clock(10);
    assert_eq!(t.call("GET", "/me", None).await.0, 200);
}

fn contact_search(field: &str, op: &str, value: Value) -> Value {
    json!({ "query": { "operator": "AND", "value": [
        { "field": field, "operator": op, "value": value },
        { "field": "email", "operator": "^", "value": "daytest" } ] },
        "sort": { "field": "updated_at", "order": "ascending" } })
}

#[tokio::test]
async fn contact_dates_match_by_local_day() {
    let t = Client::start(cfg()).await;
    let sim = t.sim();
    // T0 is 13:00 local (Dublin, UTC+1); the local day runs 23:00 UTC .. 23:00 UTC.
    let day_start = T0 - 13 * 3600;
    let next_day = day_start + 86_400;
    let mk = |name: &str, ts: i64| {
        sim.create(Kind::Contact, json!({ "email": format!("daytest-{name}@x.test"), "created_at": ts - 100, "updated_at": ts }))
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let early = mk("early", day_start + 10);
    let later_same_day = mk("later", T0 + 3600);
    let next = mk("next", next_day + 5);
    let before = mk("before", day_start - 1);
    let (s, v) = t
        .call(
            "POST",
            "/contacts/search",
            Some(contact_search("updated_at", ">", json!(T0))),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(ids(&v["data"]), vec![next.clone()]);
    let (_, v) = t
        .call(
            "POST",
            "/contacts/search",
            Some(contact_search("updated_at", "=", json!(T0.to_string()))),
        )
        .await;
    assert_eq!(ids(&v["data"]), vec![early.clone(), later_same_day.clone()]);
    let (_, v) = t
        .call(
            "POST",
            "/contacts/search",
            Some(contact_search("updated_at", "<", json!(T0))),
        )
        .await;
    assert_eq!(ids(&v["data"]), vec![before]);
    for op in [">=", "<=", "!=", "IN"] {
        let (s, v) = t
            .call(
                "POST",
                "/contacts/search",
                Some(contact_search("updated_at", op, json!(T0))),
            )
            .await;
        assert_eq!((s, err_code(&v)), (400, "parameter_invalid"), "{op}");
    }
    // In UTC the day is 00:00..24:00 UTC: `early` (23:00 UTC the day before) drops out and
    // `next` (23:00 UTC the same day) comes in.
    sim.set_timezone(chrono_tz::UTC);
    let (_, v) = t
        .call(
            "POST",
            "/contacts/search",
            Some(contact_search("updated_at", "=", json!(T0))),
        )
        .await;
    assert_eq!(ids(&v["data"]), vec![later_same_day, next]);
}

#[tokio::test]
async fn ticket_and_conversation_timestamps_are_inclusive() {
    let t = Client::start(cfg()).await;
    let ts = T0 - 5000;
    let ticket = t
        .sim()
        .create(Kind::Ticket, json!({ "created_at": ts }))
        .unwrap();
    let conv = t
        .sim()
        .create(Kind::Conversation, json!({ "created_at": ts }))
        .unwrap();
    for op in [">", "<", ">=", "<=", "="] {
        let q = json!({ "query": { "field": "created_at", "operator": op, "value": ts } });
        let (s, v) = t.call("POST", "/tickets/search", Some(q)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["type"], "ticket.list");
        assert!(
            ids(&v["tickets"]).contains(&ticket["id"].as_str().unwrap().to_string()),
            "{op}"
        );
    }
    for op in [">", "<"] {
        let q =
            json!({ "query": { "field": "created_at", "operator": op, "value": ts.to_string() } });
        let (s, v) = t.call("POST", "/conversations/search", Some(q)).await;
        assert_eq!(s, 200);
        assert_eq!(v["type"], "conversation.list");
        assert!(ids(&v["conversations"]).contains(&conv["id"].as_str().unwrap().to_string()));
        assert!(v["conversations"][0].get("conversation_parts").is_none());
    }
    let q = json!({ "query": { "field": "created_at", "operator": ">", "value": ts + 1 } });
    let (_, v) = t.call("POST", "/tickets/search", Some(q)).await;
    assert!(!ids(&v["tickets"]).contains(&ticket["id"].as_str().unwrap().to_string()));
    let q = json!({ "query": { "field": "created_at", "operator": ">=", "value": ts } });
    let (s, v) = t.call("POST", "/conversations/search", Some(q)).await;
    assert_eq!((s, err_code(&v)), (400, "parameter_invalid"));
}

#[tokio::test]
async fn query_grammar_limits() {
    let t = Client::start(cfg()).await;
    let leaf = json!({ "field": "role", "operator": "=", "value": "user" });
    let too_many = json!({ "query": { "operator": "OR", "value": vec![leaf.clone(); 16] } });
    let (s, v) = t.call("POST", "/contacts/search", Some(too_many)).await;
    assert_eq!((s, err_code(&v)), (400, "parameter_invalid"));
    let deep = json!({ "query": { "operator": "AND", "value": [ { "operator": "OR", "value": [ { "operator": "AND", "value": [leaf.clone()] } ] } ] } });
    assert_eq!(t.call("POST", "/contacts/search", Some(deep)).await.0, 400);
    let ok = json!({ "query": { "operator": "AND", "value": [ { "operator": "OR", "value": [leaf.clone(), leaf] } ] } });
    assert_eq!(t.call("POST", "/contacts/search", Some(ok)).await.0, 200);
    let bad_order = json!({ "query": { "field": "role", "operator": "=", "value": "user" }, "sort": { "field": "created_at", "order": "up" } });
    let (s, v) = t.call("POST", "/contacts/search", Some(bad_order)).await;
    assert_eq!((s, err_code(&v)), (400, "invalid_sort_order"));
    let (s, _) = t.call("POST", "/contacts/search", Some(json!({}))).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn search_pages_with_body_cursor_and_ignores_query_cursor() {
    let t = Client::start(cfg()).await;
    let q = |after: Option<&str>| {
        let mut b = json!({ "query": { "field": "created_at", "operator": ">", "value": 0 }, "pagination": { "per_page": 7 } });
        if let Some(a) = after {
            b["pagination"]["starting_after"] = json!(a);
        }
        b
    };
    let (_, p1) = t.call("POST", "/contacts/search", Some(q(None))).await;
    assert_eq!(p1["type"], "list");
    assert_eq!(p1["total_count"], 20);
    assert_eq!(p1["pages"]["page"], 1);
    assert_eq!(p1["pages"]["per_page"], 7);
    assert_eq!(p1["pages"]["total_pages"], 3);
    let cursor = p1["pages"]["next"]["starting_after"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, p2) = t
        .call("POST", "/contacts/search", Some(q(Some(&cursor))))
        .await;
    assert_eq!(p2["pages"]["page"], 2);
    let c2 = p2["pages"]["next"]["starting_after"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, p3) = t.call("POST", "/contacts/search", Some(q(Some(&c2)))).await;
    assert_eq!(p3["pages"]["page"], 3);
    assert!(p3["pages"].get("next").is_none());
    let mut all = ids(&p1["data"]);
    all.extend(ids(&p2["data"]));
    all.extend(ids(&p3["data"]));
    assert_eq!(all.len(), 20);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 20);
    // Default order: created_at descending.
    let created: Vec<i64> = all
        .iter()
        .map(|id| {
            t.sim().record(Kind::Contact, id).unwrap()["created_at"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]));
    // A cursor in the query string is ignored: page 1 again.
    let (_, again) = t
        .call(
            "POST",
            &format!("/contacts/search?starting_after={cursor}"),
            Some(q(None)),
        )
        .await;
    assert_eq!(ids(&again["data"]), ids(&p1["data"]));
    let (s, v) = t
        .call("POST", "/contacts/search", Some(q(Some("garbage!"))))
        .await;
    assert_eq!((s, err_code(&v)), (400, "parameter_invalid"));
}

#[tokio::test]
async fn per_page_is_capped_at_150() {
    let t = Client::start(SimConfig {
        contacts: 160,
        ..cfg()
    })
    .await;
    let body = json!({ "query": { "field": "role", "operator": "IN", "value": ["user", "lead"] }, "pagination": { "per_page": 500 } });
    let (_, v) = t.call("POST", "/contacts/search", Some(body)).await;
    assert_eq!(v["pages"]["per_page"], 150);
    assert_eq!(v["data"].as_array().unwrap().len(), 150);
    assert_eq!(v["total_count"], 160);
    let (_, v) = t
        .call(
            "POST",
            "/tickets/search",
            Some(json!({ "query": { "field": "open", "operator": "IN", "value": [true, false] } })),
        )
        .await;
    assert_eq!(v["pages"]["per_page"], 20);
}

#[tokio::test]
async fn index_lag_hides_new_and_shows_previous_versions() {
    let t = Client::start(SimConfig {
        search_lag_secs: 60,
        ..cfg()
    })
    .await;
    let (s, created) = t
        .call(
            "POST",
            "/contacts",
            Some(json!({ "email": "lagged@x.test", "name": "Lag" })),
        )
        .await;
    assert_eq!(s, 200);
    let existing = t.sim().records(Kind::Contact)[0].clone();
    let old_name = existing["name"].clone();
    let id = existing["id"].as_str().unwrap();
    let (s, _) = t
        .call(
            "PUT",
            &format!("/contacts/{id}"),
            Some(json!({ "name": "Renamed" })),
        )
        .await;
    assert_eq!(s, 200);
    let by_email =
        json!({ "query": { "field": "email", "operator": "=", "value": "lagged@x.test" } });
    let by_id = json!({ "query": { "field": "id", "operator": "=", "value": id } });
    let (_, v) = t
        .call("POST", "/contacts/search", Some(by_email.clone()))
        .await;
    assert_eq!(v["total_count"], 0);
    let (_, v) = t
        .call("POST", "/contacts/search", Some(by_id.clone()))
        .await;
    assert_eq!(v["data"][0]["name"], old_name);
    // Direct reads are never lagged.
    assert_eq!(
        t.call("GET", &format!("/contacts/{id}"), None).await.1["name"],
        "Renamed"
    );
    t.sim().advance_clock(60);
    let (_, v) = t.call("POST", "/contacts/search", Some(by_email)).await;
    assert_eq!(
        ids(&v["data"]),
        vec![created["id"].as_str().unwrap().to_string()]
    );
    let (_, v) = t.call("POST", "/contacts/search", Some(by_id)).await;
    assert_eq!(v["data"][0]["name"], "Renamed");
}

#[tokio::test]
async fn company_scroll_is_single_open_expires_and_ends_empty() {
    let t = Client::start(SimConfig {
        companies: 7,
        contacts: 60,
        scroll_page_size: 2,
        ..cfg()
    })
    .await;
    let visible: HashSet<String> = t
        .sim()
        .records(Kind::Company)
        .iter()
        .filter(|c| c["user_count"].as_i64().unwrap() > 0)
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert!(visible.len() < 7, "the last seeded company has no contacts");
    let (s, p) = t.call("GET", "/companies/scroll", None).await;
    assert_eq!(s, 200);
    assert_eq!(p["pages"], Value::Null);
    assert_eq!(p["total_count"], Value::Null);
    let param = p["scroll_param"].as_str().unwrap().to_string();
    let (s, v) = t.call("GET", "/companies/scroll", None).await;
    assert_eq!((s, err_code(&v)), (400, "scroll_exists"));
    assert_eq!(
        v["errors"][0]["message"],
        "scroll already exists for this app"
    );
    let mut seen: Vec<String> = ids(&p["data"]);
    loop {
        let (s, v) = t
            .call(
                "GET",
                &format!("/companies/scroll?scroll_param={param}"),
                None,
            )
            .await;
        assert_eq!(s, 200);
        if v["data"].as_array().unwrap().is_empty() {
            break;
        }
        seen.extend(ids(&v["data"]));
    }
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), visible);
    assert_eq!(seen.len(), visible.len());
    // The end closed the scroll: a new one may start, and it expires after 60 s idle.
    let (s, p) = t.call("GET", "/companies/scroll", None).await;
    assert_eq!(s, 200);
    let param = p["scroll_param"].as_str().unwrap().to_string();
    t.sim().advance_clock(61);
    let (s, _) = t
        .call(
            "GET",
            &format!("/companies/scroll?scroll_param={param}"),
            None,
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(t.call("GET", "/companies/scroll", None).await.0, 200);
}

#[tokio::test]
async fn contacts_conflict_and_company_rules() {
    let t = Client::start(cfg()).await;
    let (s, c) = t
        .call(
            "POST",
            "/contacts",
            Some(json!({ "email": "dup@x.test", "external_id": "ext-1" })),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(c["role"], "user");
    assert_eq!(c["email_domain"], "x.test");
    let id = c["id"].as_str().unwrap();
    assert_eq!(id.len(), 24);
    let (s, v) = t
        .call("POST", "/contacts", Some(json!({ "email": "DUP@x.test" })))
        .await;
    assert_eq!((s, err_code(&v)), (409, "conflict"));
    assert_eq!(
        v["errors"][0]["message"],
        format!("A contact matching those details already exists with id={id}")
    );
    let (s, _) = t
        .call(
            "POST",
            "/contacts",
            Some(json!({ "email": "dup@x.test", "role": "lead" })),
        )
        .await;
    assert_eq!(s, 200, "a lead may share a user's email");
    let (s, v) = t
        .call("POST", "/contacts", Some(json!({ "name": "nobody" })))
        .await;
    assert_eq!((s, err_code(&v)), (400, "parameter_invalid"));
    let (s, v) = t
        .call("GET", "/contacts/find_by_external_id/ext-1", None)
        .await;
    assert_eq!((s, v["id"].as_str()), (200, Some(id)));
    let (s, v) = t
        .call("GET", "/contacts/000000000000000000000000", None)
        .await;
    assert_eq!(
        (s, v["errors"][0]["message"].as_str()),
        (404, Some("User Not Found"))
    );

    let (s, v) = t
        .call("POST", "/companies", Some(json!({ "test": "invalid" })))
        .await;
    assert_eq!((s, err_code(&v)), (400, "bad_request"));
    assert_eq!(v["errors"][0]["message"], "bad 'test' parameter");
    let (s, co) = t.call("POST", "/companies", Some(json!({ "company_id": "acme-1", "name": "Acme", "plan": "Pro", "monthly_spend": 12.7 }))).await;
    assert_eq!(s, 200);
    assert_eq!(co["monthly_spend"], 12);
    assert_eq!(co["plan"]["name"], "Pro");
    let co_id = co["id"].as_str().unwrap();
    let (_, again) = t
        .call(
            "POST",
            "/companies",
            Some(json!({ "company_id": "acme-1", "size": 40 })),
        )
        .await;
    assert_eq!(
        (again["id"].as_str(), again["size"].as_i64()),
        (Some(co_id), Some(40))
    );
    let (s, v) = t.call("GET", "/companies?company_id=acme-1", None).await;
    assert_eq!(
        (s, v["type"].as_str(), v["data"][0]["id"].as_str()),
        (200, Some("list"), Some(co_id))
    );
    let (s, v) = t.call("GET", "/companies?name=nope", None).await;
    assert_eq!((s, err_code(&v)), (404, "company_not_found"));
    let (s, v) = t
        .call(
            "POST",
            &format!("/contacts/{id}/companies"),
            Some(json!({})),
        )
        .await;
    assert_eq!((s, err_code(&v)), (400, "parameter_not_found"));
    assert_eq!(v["errors"][0]["message"], "company not specified");
    let (s, v) = t
        .call(
            "POST",
            &format!("/contacts/{id}/companies"),
            Some(json!({ "id": "nope" })),
        )
        .await;
    assert_eq!((s, err_code(&v)), (404, "company_not_found"));
    let (s, v) = t
        .call(
            "POST",
            "/contacts/nope/companies",
            Some(json!({ "id": co_id })),
        )
        .await;
    assert_eq!(
        (s, v["errors"][0]["message"].as_str()),
        (404, Some("User Not Found"))
    );
    let (s, v) = t
        .call(
            "POST",
            &format!("/contacts/{id}/companies"),
            Some(json!({ "id": co_id })),
        )
        .await;
    assert_eq!((s, v["user_count"].as_i64()), (200, Some(1)));
    let (s, v) = t.call("DELETE", &format!("/companies/{co_id}"), None).await;
    assert_eq!(
        (s, v),
        (
            200,
            json!({ "id": co_id, "object": "company", "deleted": true })
        )
    );
    assert_eq!(
        t.sim().record(Kind::Contact, id).unwrap()["companies"]["total_count"],
        0
    );
    let (s, v) = t.call("GET", &format!("/companies/{co_id}"), None).await;
    assert_eq!(
        (s, v["errors"][0]["message"].as_str()),
        (404, Some("Company Not Found"))
    );
}

#[tokio::test]
async fn tags_notes_and_delete_with_body() {
    let t = Client::start(cfg()).await;
    let (_, a) = t
        .call("POST", "/tags", Some(json!({ "name": "Hot Lead" })))
        .await;
    let (_, b) = t
        .call("POST", "/tags", Some(json!({ "name": "hot lead" })))
        .await;
    assert_eq!(a["id"], b["id"]);
    assert_eq!(b["name"], "Hot Lead");
    let tag = a["id"].as_str().unwrap().to_string();
    let admin = "991267701";
    let conv = t.sim().records(Kind::Conversation)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ticket = t.sim().records(Kind::Ticket)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (kind, id) in [("conversations", &conv), ("tickets", &ticket)] {
        let (s, v) = t
            .call(
                "POST",
                &format!("/{kind}/{id}/tags"),
                Some(json!({ "id": tag })),
            )
            .await;
        assert_eq!((s, err_code(&v)), (400, "parameter_not_found"), "{kind}");
        let (s, v) = t
            .call(
                "POST",
                &format!("/{kind}/{id}/tags"),
                Some(json!({ "id": tag, "admin_id": admin })),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["applied_by"]["id"], admin);
        let (s, v) = t
            .call(
                "DELETE",
                &format!("/{kind}/{id}/tags/{tag}"),
                Some(json!({ "admin_id": admin })),
            )
            .await;
        assert_eq!((s, v["id"].as_str()), (200, Some(tag.as_str())));
        let (s, v) = t
            .call(
                "DELETE",
                &format!("/{kind}/{id}/tags/{tag}"),
                Some(json!({ "admin_id": admin })),
            )
            .await;
        assert_eq!((s, err_code(&v)), (404, "tag_not_found"));
    }
    let audit = t.sim().audit();
    let del = audit.iter().find(|e| e.method == "DELETE").unwrap();
    assert_eq!(del.body, Some(json!({ "admin_id": admin })));
    let (s, v) = t
        .call(
            "DELETE",
            "/tickets/999999/tags/1",
            Some(json!({ "admin_id": admin })),
        )
        .await;
    assert_eq!((s, err_code(&v)), (404, "ticket_not_found"));

    let contact = t.sim().records(Kind::Contact)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = t
        .call(
            "POST",
            &format!("/contacts/{contact}/tags"),
            Some(json!({ "id": tag })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        t.sim().record(Kind::Contact, &contact).unwrap()["tags"]["data"][0]["id"],
        tag.as_str()
    );
    let (s, note) = t
        .call(
            "POST",
            &format!("/contacts/{contact}/notes"),
            Some(json!({ "body": "Hello & bye" })),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(note["type"], "note");
    assert_eq!(note["body"], "<p>Hello &amp; bye</p>");
    assert_eq!(note["contact"]["id"], contact.as_str());
    assert_eq!(note["author"]["type"], "admin");
    let (s, _) = t.call("DELETE", &format!("/tags/{tag}"), None).await;
    assert_eq!(s, 200);
    assert_eq!(
        t.sim().record(Kind::Contact, &contact).unwrap()["tags"]["total_count"],
        0
    );
    let (s, v) = t.call("GET", &format!("/tags/{tag}"), None).await;
    assert_eq!((s, err_code(&v)), (404, "not_found"));
}

#[tokio::test]
async fn events_are_accepted_once() {
    let t = Client::start(cfg()).await;
    let user = t
        .sim()
        .records(Kind::Contact)
        .into_iter()
        .find(|c| c["role"] == "user")
        .unwrap();
    let ev = json!({ "event_name": "ordered-item", "created_at": T0 - 10, "user_id": user["external_id"] });
    let rb = t
        .builder("POST", "/events")
        .header("authorization", "Bearer sim-token")
        .header("accept", "application/json");
    let resp = rb
        .header("content-type", "application/json")
        .body(ev.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(resp.text().await.unwrap(), "");
    assert_eq!(t.call("POST", "/events", Some(ev)).await.0, 202);
    let by_email =
        json!({ "event_name": "ordered-item", "created_at": T0 - 10, "email": user["email"] });
    assert_eq!(t.call("POST", "/events", Some(by_email)).await.0, 202);
    let events = t.sim().records(Kind::Event);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["contact_id"], user["id"]);
    let (s, v) = t
        .call(
            "POST",
            "/events",
            Some(json!({ "event_name": "x", "created_at": 1, "id": "nope" })),
        )
        .await;
    assert_eq!((s, err_code(&v)), (404, "not_found"));
}

#[tokio::test]
async fn conversations_create_convert_and_update() {
    let t = Client::start(cfg()).await;
    let contact = t.sim().records(Kind::Contact)[0].clone();
    let cid = contact["id"].as_str().unwrap();
    let body = json!({ "from": { "type": "user", "id": cid }, "body": "Hello there", "created_at": T0 - 86_400 });
    let (s, msg) = t.call("POST", "/conversations", Some(body)).await;
    assert_eq!(s, 200);
    assert_eq!(msg["type"], "user_message");
    assert_eq!(msg["body"], "Hello there");
    let conv_id = msg["conversation_id"].as_str().unwrap().to_string();
    let (s, conv) = t
        .call("GET", &format!("/conversations/{conv_id}"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(conv["created_at"], T0 - 86_400);
    assert_eq!(conv["source"]["body"], "<p>Hello there</p>");
    assert!(conv["conversation_parts"]["conversation_parts"].is_array());
    let (s, v) = t
        .call(
            "POST",
            &format!("/conversations/{conv_id}/convert"),
            Some(json!({ "ticket_type_id": "102" })),
        )
        .await;
    assert_eq!((s, err_code(&v)), (400, "parameter_invalid"));
    assert_eq!(
        v["errors"][0]["message"],
        "Ticket type is not a customer ticket type"
    );
    let (s, ticket) = t
        .call(
            "POST",
            &format!("/conversations/{conv_id}/convert"),
            Some(json!({ "ticket_type_id": "100" })),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(ticket["type"], "ticket");
    assert_eq!(ticket["created_at"], T0 - 86_400);
    assert_eq!(ticket["category"], "Customer");
    assert_eq!(ticket["contacts"]["contacts"][0]["id"], cid);
    t.sim().advance_clock(5);
    let (s, upd) = t
        .call(
            "PUT",
            &format!("/conversations/{conv_id}"),
            Some(json!({ "read": true, "title": "Hi" })),
        )
        .await;
    assert_eq!(
        (s, upd["read"].as_bool(), upd["updated_at"].as_i64()),
        (200, Some(true), Some(T0 + 5))
    );
    let (s, v) = t
        .call("DELETE", &format!("/conversations/{conv_id}"), None)
        .await;
    assert_eq!((s, v["deleted"].as_bool()), (200, Some(true)));
    let (s, v) = t
        .call("GET", &format!("/conversations/{conv_id}"), None)
        .await;
    assert_eq!(
        (s, v["errors"][0]["message"].as_str()),
        (404, Some("Resource Not Found"))
    );
}

#[tokio::test]
async fn tickets_create_update_and_bump_updated_at() {
    let t = Client::start(cfg()).await;
    let (s, tk) = t
        .call(
            "POST",
            "/tickets",
            Some(json!({
                "ticket_type_id": "100",
                "contacts": [{ "email": "new-ticket@x.test" }],
                "ticket_attributes": { "_default_title_": "Broken" },
            })),
        )
        .await;
    assert_eq!(s, 200, "{tk}");
    assert_eq!(tk["ticket_state"]["category"], "submitted");
    assert_eq!(tk["admin_assignee_id"], "0");
    assert!(t
        .sim()
        .records(Kind::Contact)
        .iter()
        .any(|c| c["email"] == "new-ticket@x.test"));
    let id = tk["id"].as_str().unwrap().to_string();
    t.sim().advance_clock(30);
    let (s, v) = t
        .call(
            "PUT",
            &format!("/tickets/{id}"),
            Some(json!({ "ticket_state_id": "8576" })),
        )
        .await;
    assert_eq!((s, err_code(&v)), (400, "ticket_state_id_invalid"));
    let (s, v) = t
        .call(
            "PUT",
            &format!("/tickets/{id}"),
            Some(json!({ "assignee_id": "1" })),
        )
        .await;
    assert_eq!((s, err_code(&v)), (404, "assignee_not_found"));
    let (s, v) = t
        .call("PUT", &format!("/tickets/{id}"), Some(json!({ "ticket_state_id": "8573", "admin_id": 991267700, "assignee_id": "991267702" })))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ticket_state"]["category"], "resolved");
    assert_eq!(v["open"], false);
    assert_eq!(v["admin_assignee_id"], "991267702");
    assert_eq!(v["updated_at"], T0 + 30);
    assert_eq!(
        v["ticket_parts"]["ticket_parts"][0]["part_type"],
        "ticket_state_updated_by_admin"
    );
    let (s, v) = t.call("GET", "/tickets/0", None).await;
    assert_eq!(
        (s, v["errors"][0]["message"].as_str()),
        (404, Some("Ticket not found"))
    );
    let (s, v) = t.call("DELETE", &format!("/tickets/{id}"), None).await;
    assert_eq!(
        (s, v),
        (
            200,
            json!({ "id": id, "object": "ticket", "deleted": true })
        )
    );
    // Tagging a contact bumps it too.
    let contact = t.sim().records(Kind::Contact)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    t.sim().advance_clock(7);
    let tag = t.sim().records(Kind::Tag)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    t.call(
        "POST",
        &format!("/contacts/{contact}/tags"),
        Some(json!({ "id": tag })),
    )
    .await;
    assert_eq!(
        t.sim().record(Kind::Contact, &contact).unwrap()["updated_at"],
        T0 + 37
    );
    let (_, types) = t.call("GET", "/ticket_types", None).await;
    assert!(types["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "Bug Report" && t["category"] == "Customer"));
}

#[tokio::test]
async fn fail_next_and_drop_faults() {
    let t = Client::start(cfg()).await;
    t.sim().set_faults(Faults {
        fail_next: vec![
            FailRule {
                count: 2,
                ..FailRule::once(Some("post"), "/contacts/search", 503)
            },
            FailRule::once(None, "/me", 0),
        ],
        ..Faults::default()
    });
    let q = json!({ "query": { "field": "role", "operator": "=", "value": "user" } });
    for _ in 0..2 {
        let (s, v) = t.call("POST", "/contacts/search", Some(q.clone())).await;
        assert_eq!((s, err_code(&v)), (503, "service_unavailable"));
    }
    assert_eq!(t.call("POST", "/contacts/search", Some(q)).await.0, 200);
    let dropped = t
        .builder("GET", "/me")
        .header("authorization", "Bearer sim-token")
        .header("accept", "application/json")
        .send()
        .await;
    assert!(dropped.is_err(), "{dropped:?}");
    assert_eq!(t.sim().audit().last().unwrap().status, 0);
    assert_eq!(t.call("GET", "/me", None).await.0, 200);
    assert!(t.sim().faults().fail_next.is_empty());
}

#[tokio::test]
async fn fail_next_skips_and_fails_after_the_write() {
    let t = Client::start(cfg()).await;
    let contact = t.sim().records(Kind::Contact)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    t.sim().set_faults(Faults {
        fail_next: vec![FailRule {
            skip: 1,
            after_write: true,
            ..FailRule::once(Some("POST"), "/contacts/", 500)
        }],
        ..Faults::default()
    });
    let path = format!("/contacts/{contact}/notes");
    let note = |b: &str| json!({"body": b, "admin_id": t.sim().records(Kind::Admin)[0]["id"]});
    // The first matching request is let through, the second is carried out and then failed.
    assert_eq!(t.call("POST", &path, Some(note("one"))).await.0, 200);
    let (s, v) = t.call("POST", &path, Some(note("two"))).await;
    assert_eq!((s, err_code(&v)), (500, "server_error"));
    let (_, notes) = t.call("GET", &path, None).await;
    let bodies: Vec<&str> = notes["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["body"].as_str())
        .collect();
    assert!(bodies.iter().any(|b| b.contains("two")), "{bodies:?}");
    assert!(t.sim().faults().fail_next.is_empty());
}

#[tokio::test]
async fn control_api_round_trip() {
    let t = Client::start(cfg()).await;
    let c = &t.c;
    let base = &t.h.base_url;
    let v: Value = c
        .post(format!("{base}/_sim/clock"))
        .body(r#"{"advance": 15}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["now"], T0 + 15);
    let v: Value = c
        .post(format!("{base}/_sim/contacts"))
        .body(r#"{"email": "ctl@x.test", "created_at": 1700000000}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            v["email"].as_str(),
            v["created_at"].as_i64(),
            v["updated_at"].as_i64()
        ),
        (Some("ctl@x.test"), Some(1_700_000_000), Some(1_700_000_000))
    );
    let id = v["id"].as_str().unwrap();
    let v: Value = c
        .patch(format!("{base}/_sim/contacts/{id}"))
        .body(r#"{"name": "Ctl"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["name"].as_str(), v["updated_at"].as_i64()),
        (Some("Ctl"), Some(T0 + 15))
    );
    let v: Value = c
        .put(format!("{base}/_sim/config"))
        .body(r#"{"search_lag_secs": 5}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["search_lag_secs"], 5);
    let v: Value = c
        .post(format!("{base}/_sim/churn"))
        .body(r#"{"count": 25}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["changed"].as_array().unwrap().len(), 25);
    t.call("GET", "/me", None).await;
    let v: Value = c
        .get(format!("{base}/_sim/audit"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        1,
        "control calls are not audited"
    );
    let seq = v[0]["seq"].as_u64().unwrap();
    t.call("GET", "/me", None).await;
    let v: Value = c
        .get(format!("{base}/_sim/audit?since={seq}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["auth"], "valid");
    assert_eq!(v[0]["intercom_version"], "2.15");
    let s = c
        .delete(format!("{base}/_sim/contacts/{id}"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s.as_u16(), 200);
    assert!(t.sim().record(Kind::Contact, id).is_none());
    let s = c
        .put(format!("{base}/_sim/faults"))
        .body(r#"{"fail_next":[{"path_prefix":"/me","status":500}]}"#)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s.as_u16(), 200);
    assert_eq!(t.call("GET", "/me", None).await.0, 500);
    c.post(format!("{base}/_sim/reset")).send().await.unwrap();
    assert_eq!(t.sim().records(Kind::Contact).len(), 20);
}

#[test]
fn seeding_is_deterministic() {
    let a = Sim::new(cfg());
    let b = Sim::new(cfg());
    let other = Sim::new(SimConfig { seed: 7, ..cfg() });
    for kind in Kind::ALL {
        assert_eq!(a.records(kind), b.records(kind), "{kind:?}");
    }
    assert_ne!(a.records(Kind::Contact), other.records(Kind::Contact));
    assert_eq!(a.churn(30), b.churn(30));
    assert_eq!(a.records(Kind::Ticket), b.records(Kind::Ticket));
    for c in a.records(Kind::Contact) {
        let (cr, up) = (
            c["created_at"].as_i64().unwrap(),
            c["updated_at"].as_i64().unwrap(),
        );
        assert!(cr <= up && up <= T0 && cr >= T0 - 30 * 86_400);
    }
    let companies = a.records(Kind::Company);
    assert!(companies.iter().any(|c| c["user_count"] == 0));
    assert!(companies
        .iter()
        .any(|c| c["user_count"].as_i64().unwrap() > 0));
}

#[test]
fn paging_2000_contacts_returns_each_once_in_order_despite_updates() {
    let sim = Sim::new(SimConfig {
        contacts: 2000,
        companies: 3,
        tickets: 0,
        conversations: 0,
        ..cfg()
    });
    // Descending created_at, no writes: every record exactly once.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut body = json!({ "query": { "field": "role", "operator": "!=", "value": "admin" }, "pagination": { "per_page": 150 } });
        if let Some(a) = &after {
            body["pagination"]["starting_after"] = json!(a);
        }
        let (s, v) = direct(&sim, "POST", "/contacts/search", Some(body));
        assert_eq!(s, 200);
        assert_eq!(v["total_count"], 2000);
        seen.extend(ids(&v["data"]));
        match v["pages"]["next"]["starting_after"].as_str() {
            Some(c) => after = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 2000);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 2000);
    let order: Vec<(i64, String)> = seen
        .iter()
        .map(|id| {
            (
                sim.record(Kind::Contact, id).unwrap()["created_at"]
                    .as_i64()
                    .unwrap(),
                id.clone(),
            )
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] > w[1]));

    // Ascending updated_at while records not yet served are updated: each is still served once,
    // at its new position, and the served sequence stays ordered.
    let mut served: Vec<(i64, String)> = Vec::new();
    let mut after: Option<String> = None;
    let mut page = 0;
    loop {
        let mut body = json!({ "query": { "field": "created_at", "operator": ">", "value": 0 },
            "sort": { "field": "updated_at", "order": "ascending" }, "pagination": { "per_page": 150 } });
        if let Some(a) = &after {
            body["pagination"]["starting_after"] = json!(a);
        }
        let (_, v) = direct(&sim, "POST", "/contacts/search", Some(body));
        for c in v["data"].as_array().unwrap() {
            served.push((
                c["updated_at"].as_i64().unwrap(),
                c["id"].as_str().unwrap().to_string(),
            ));
        }
        page += 1;
        if page % 3 == 0 {
            sim.advance_clock(1);
            let done: HashSet<&String> = served.iter().map(|(_, id)| id).collect();
            let pending: Vec<String> = sim
                .records(Kind::Contact)
                .into_iter()
                .map(|c| c["id"].as_str().unwrap().to_string())
                .filter(|id| !done.contains(id))
                .take(5)
                .collect();
            for id in pending {
                let (s, _) = direct(
                    &sim,
                    "PUT",
                    &format!("/contacts/{id}"),
                    Some(json!({ "name": format!("moved {page}") })),
                );
                assert_eq!(s, 200);
            }
        }
        match v["pages"]["next"]["starting_after"].as_str() {
            Some(c) => after = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(served.len(), 2000);
    assert_eq!(
        served
            .iter()
            .map(|(_, id)| id)
            .collect::<HashSet<_>>()
            .len(),
        2000
    );
    assert!(served.windows(2).all(|w| w[0] < w[1]));
    assert!(
        served.iter().any(|(ts, _)| *ts > T0),
        "some records were served after being updated"
    );
}

/// Manual benchmark: `cargo test --release --lib sim::tests::bench -- --ignored --nocapture`.

#[tokio::test]
async fn contact_list_pages_with_query_cursor() {
    let t = Client::start(cfg()).await;
    let mut seen = Vec::new();
    let mut path = "/contacts?per_page=8".to_string();
    loop {
        let (s, v) = t.call("GET", &path, None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["total_count"], 20);
        seen.extend(ids(&v["data"]));
        match v["pages"]["next"]["starting_after"].as_str() {
            Some(c) => path = format!("/contacts?per_page=8&starting_after={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 20);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 20);
}

#[tokio::test]
async fn scroll_server_error_requires_restart() {
    let t = Client::start(SimConfig {
        scroll_page_size: 1,
        ..cfg()
    })
    .await;
    let (_, p) = t.call("GET", "/companies/scroll", None).await;
    let param = p["scroll_param"].as_str().unwrap().to_string();
    t.sim().set_faults(Faults {
        fail_next: vec![FailRule { message: Some("Request failed due to an internal network error. Please restart the scroll operation.".into()), ..FailRule::once(None, "/companies/scroll", 500) }],
        ..Faults::default()
    });
    let path = format!("/companies/scroll?scroll_param={param}");
    assert_eq!(t.call("GET", &path, None).await.0, 500);
    assert_eq!(t.call("GET", &path, None).await.0, 400);
    assert_eq!(t.call("GET", "/companies/scroll", None).await.0, 200);
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let t = Client::start(cfg()).await;
    assert_eq!(t.call("GET", "/me", None).await.0, 200);
    let base = t.h.base_url.clone();
    t.h.shutdown().await.unwrap();
    let fresh = reqwest::Client::builder().build().unwrap();
    assert!(fresh.get(format!("{base}/me")).send().await.is_err());
}

#[test]
fn sim_args_build_a_config() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }
    let cli = Cli::parse_from([
        "x",
        "--seed",
        "7",
        "--token",
        "a",
        "--token",
        "b",
        "--timezone",
        "America/New_York",
        "--frozen-clock",
        "--start-time",
        "100",
    ]);
    let c = cli.sim.config().unwrap();
    assert_eq!(
        (c.seed, c.tokens.clone(), c.start_time, c.frozen_clock),
        (7, vec!["a".to_string(), "b".to_string()], 100, true)
    );
    assert_eq!(c.timezone, chrono_tz::America::New_York);
    let cli = Cli::parse_from(["x", "--timezone", "Mars/Olympus"]);
    assert!(cli.sim.config().is_err());
    let c = Cli::parse_from(["x"]).sim.config().unwrap();
    assert_eq!(
        (c.tokens, c.rate_limit_per_window, c.contacts),
        (vec!["sim-token".to_string()], 1666, 20)
    );
}

#[test]
fn odd_inputs_never_panic_or_500() {
    let sim = Sim::new(cfg());
    let contact = sim.records(Kind::Contact)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ticket = sim.records(Kind::Ticket)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let conv = sim.records(Kind::Conversation)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let company = sim.records(Kind::Company)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let routes = [
        ("POST", "/contacts".to_string()),
        ("POST", "/contacts/search".to_string()),
        ("PUT", format!("/contacts/{contact}")),
        ("POST", format!("/contacts/{contact}/notes")),
        ("POST", format!("/contacts/{contact}/tags")),
        ("POST", format!("/contacts/{contact}/companies")),
        ("POST", "/companies".to_string()),
        ("PUT", format!("/companies/{company}")),
        ("POST", "/tickets".to_string()),
        ("POST", "/tickets/search".to_string()),
        ("PUT", format!("/tickets/{ticket}")),
        ("POST", format!("/tickets/{ticket}/tags")),
        ("DELETE", format!("/tickets/{ticket}/tags/100")),
        ("POST", "/conversations".to_string()),
        ("POST", "/conversations/search".to_string()),
        ("PUT", format!("/conversations/{conv}")),
        ("POST", format!("/conversations/{conv}/convert")),
        ("POST", format!("/conversations/{conv}/parts")),
        ("POST", format!("/conversations/{conv}/tags")),
        ("DELETE", format!("/conversations/{conv}/tags/100")),
        ("POST", "/tags".to_string()),
        ("POST", "/events".to_string()),
    ];
    let bodies = [
        json!(null),
        json!([]),
        json!("x"),
        json!(12),
        json!({}),
        json!({ "query": 5 }),
        json!({ "query": { "field": "created_at", "operator": ">", "value": "abc" } }),
        json!({ "query": { "field": "created_at", "operator": ">", "value": 1e300 } }),
        json!({ "query": { "field": "updated_at", "operator": "=", "value": -9_223_372_036_854_775_807_i64 } }),
        json!({ "query": { "operator": "AND", "value": [] }, "pagination": { "per_page": -1 } }),
        json!({ "query": { "field": "email", "operator": "IN", "value": "notalist" } }),
        json!({ "query": { "field": "x", "operator": "~", "value": {} }, "sort": { "field": 5 } }),
        json!({ "id": {}, "admin_id": [], "name": 5, "email": 7, "role": "admin" }),
        json!({ "contacts": [{}], "ticket_type_id": {}, "from": { "type": "user", "id": 5 }, "body": 3 }),
        json!({ "ticket_state_id": "x", "assignee_id": "991267700", "company_id": 5, "open": "no" }),
        json!({ "message_type": "snoozed", "admin_id": "991267700", "snoozed_until": "soon" }),
        json!({ "event_name": "e", "created_at": "x", "email": null, "metadata": [] }),
        json!({ "company_id": "acme", "monthly_spend": "lots", "size": 1e300, "plan": 5, "custom_attributes": 3 }),
        json!({ "name": "VIP", "users": [{ "id": "nope" }], "companies": [{}] }),
    ];
    for (method, path) in &routes {
        for body in &bodies {
            let (s, v) = direct(&sim, method, path, Some(body.clone()));
            assert!(s < 500, "{method} {path} {body} -> {s} {v}");
        }
    }
    let (s, _) = direct(
        &sim,
        "GET",
        "/companies?page=99999999999999999999&per_page=60",
        None,
    );
    assert_eq!(s, 200);
    let (s, _) = direct(
        &sim,
        "GET",
        "/companies?page=18446744073709551615&per_page=60",
        None,
    );
    assert_eq!(s, 400);
    sim.set_clock(i64::MAX);
    sim.advance_clock(i64::MAX);
    assert_eq!(direct(&sim, "GET", "/me", None).0, 200);
}

/// A small JSON-schema checker for the OpenAPI 2.15 component schemas (type, nullable, enum,
/// properties, required, items, allOf/oneOf/anyOf), used to keep object shapes conformant.
fn schema_errors(spec: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap();
        return schema_errors(spec, &spec["components"]["schemas"][name], v, at, errs);
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            schema_errors(spec, s, v, at, errs);
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(any) = schema.get(key).and_then(Value::as_array) {
            let ok = any.iter().any(|s| {
                let mut e = Vec::new();
                schema_errors(spec, s, v, at, &mut e);
                e.is_empty()
            });
            let null_ok = v.is_null() && schema["nullable"] == true;
            if !(ok || null_ok) {
                errs.push(format!("{at}: matches no {key} branch: {v}"));
            }
        }
    }
    if v.is_null() {
        if schema.get("type").is_some() && schema["nullable"] != true {
            errs.push(format!("{at}: null but not nullable"));
        }
        return;
    }
    let ok = match schema.get("type").and_then(Value::as_str) {
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        _ => true,
    };
    if !ok {
        errs.push(format!("{at}: expected {} got {v}", schema["type"]));
        return;
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errs.push(format!("{at}: {v} not in enum {e:?}"));
        }
    }
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        v.as_object(),
    ) {
        for (k, s) in props {
            if let Some(x) = obj.get(k) {
                schema_errors(spec, s, x, &format!("{at}.{k}"), errs);
            }
        }
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(r.as_str().unwrap()) {
                errs.push(format!("{at}: missing required {r}"));
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            schema_errors(spec, items, x, &format!("{at}[{i}]"), errs);
        }
    }
}

#[test]
fn objects_conform_to_the_openapi_schemas() {
    // Intercom's official description, vendored (MIT) so the check always runs.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/intercom-openapi/api.intercom.io-2.15.yaml"
    );
    let text = std::fs::read_to_string(path).expect("the vendored OpenAPI description");
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let spec = serde_json::to_value(yaml).unwrap();
    let sim = Sim::new(cfg());
    let contact = sim.records(Kind::Contact)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let conv = sim.records(Kind::Conversation)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let company = sim.records(Kind::Company)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ticket = sim.records(Kind::Ticket)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let search = |field: &str| json!({ "query": { "field": field, "operator": ">", "value": 0 }, "pagination": { "per_page": 3 } });
    let cases: Vec<(&str, &str, String, Option<Value>)> = vec![
        ("admin_with_app", "GET", "/me".into(), None),
        ("contact", "GET", format!("/contacts/{contact}"), None),
        (
            "contact_list",
            "POST",
            "/contacts/search".into(),
            Some(search("created_at")),
        ),
        ("contact_list", "GET", "/contacts?per_page=2".into(), None),
        (
            "conversation_list",
            "POST",
            "/conversations/search".into(),
            Some(search("created_at")),
        ),
        (
            "ticket_list",
            "POST",
            "/tickets/search".into(),
            Some(search("created_at")),
        ),
        (
            "conversation",
            "GET",
            format!("/conversations/{conv}"),
            None,
        ),
        ("ticket", "GET", format!("/tickets/{ticket}"), None),
        ("company", "GET", format!("/companies/{company}"), None),
        ("company_scroll", "GET", "/companies/scroll".into(), None),
        ("company_list", "GET", "/companies?per_page=2".into(), None),
        (
            "company_attached_contacts",
            "GET",
            format!("/companies/{company}/contacts"),
            None,
        ),
        (
            "contact_attached_companies",
            "GET",
            format!("/contacts/{contact}/companies"),
            None,
        ),
        (
            "note",
            "POST",
            format!("/contacts/{contact}/notes"),
            Some(json!({ "body": "hi" })),
        ),
        (
            "note_list",
            "GET",
            format!("/contacts/{contact}/notes"),
            None,
        ),
        (
            "tag",
            "POST",
            format!("/contacts/{contact}/tags"),
            Some(json!({ "id": "100" })),
        ),
        ("tag_list", "GET", "/tags".into(), None),
        (
            "tag_basic",
            "POST",
            "/tags".into(),
            Some(json!({ "name": "New" })),
        ),
        ("ticket_type_list", "GET", "/ticket_types".into(), None),
        ("ticket_state_list", "GET", "/ticket_states".into(), None),
        (
            "ticket",
            "PUT",
            format!("/tickets/{ticket}"),
            Some(json!({ "ticket_state_id": "8571", "snoozed_until": T0 + 60 })),
        ),
        (
            "ticket",
            "POST",
            format!("/conversations/{conv}/convert"),
            Some(json!({ "ticket_type_id": "100" })),
        ),
        (
            "conversation",
            "POST",
            format!("/conversations/{conv}/parts"),
            Some(json!({ "message_type": "close", "admin_id": "991267700", "body": "bye" })),
        ),
        (
            "message",
            "POST",
            "/messages".into(),
            Some(
                json!({ "message_type": "email", "subject": "Hi", "body": "Hello", "from": { "type": "admin", "id": "991267700" },
                "to": { "type": "user", "id": contact }, "create_conversation_without_contact_reply": true }),
            ),
        ),
        (
            "message",
            "POST",
            "/conversations".into(),
            Some(json!({ "from": { "type": "user", "id": contact }, "body": "yo" })),
        ),
        (
            "contact",
            "POST",
            "/contacts".into(),
            Some(json!({ "role": "lead" })),
        ),
        (
            "company",
            "POST",
            "/companies".into(),
            Some(json!({ "company_id": "c-1" })),
        ),
        (
            "contact_deleted",
            "DELETE",
            format!("/contacts/{contact}"),
            None,
        ),
        (
            "ticket_deleted",
            "DELETE",
            format!("/tickets/{ticket}"),
            None,
        ),
        (
            "conversation_deleted",
            "DELETE",
            format!("/conversations/{conv}"),
            None,
        ),
        (
            "deleted_company_object",
            "DELETE",
            format!("/companies/{company}"),
            None,
        ),
        ("error", "GET", "/contacts/nope".into(), None),
    ];
    let mut errs = Vec::new();
    for (schema, method, path, body) in cases {
        let (s, v) = direct(&sim, method, &path, body);
        assert!(s < 300 || schema == "error", "{method} {path}: {s} {v}");
        schema_errors(
            &spec,
            &json!({ "$ref": format!("#/components/schemas/{schema}") }),
            &v,
            &format!("{method} {path}"),
            &mut errs,
        );
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    // The checker itself catches wrong types and nulls.
    let mut bad = Vec::new();
    let bad_contact =
        json!({ "type": "contact", "id": 5, "email": null, "tags": { "data": [{ "id": 1 }] } });
    schema_errors(
        &spec,
        &json!({ "$ref": "#/components/schemas/contact" }),
        &bad_contact,
        "bad",
        &mut bad,
    );
    assert_eq!(bad.len(), 3, "{bad:?}");
}

#[test]
fn random_faults_follow_their_rates() {
    let sim = Sim::new(cfg());
    sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    for _ in 0..5 {
        let (s, v) = direct(&sim, "GET", "/me", None);
        assert!(matches!(s, 500 | 502 | 503 | 504));
        assert_eq!(err_code(&v), "server_error");
    }
    sim.set_faults(Faults {
        rate_limit_rate: 1.0,
        ..Faults::default()
    });
    let (s, v) = direct(&sim, "GET", "/me", None);
    assert_eq!((s, err_code(&v)), (429, "rate_limit_exceeded"));
    sim.set_faults(Faults::default());
    assert_eq!(direct(&sim, "GET", "/me", None).0, 200);
    assert!(sim.audit().iter().all(|e| e.auth == AuthSeen::Valid));
}

#[test]
fn control_create_fills_and_links_records() {
    let sim = Sim::new(cfg());
    let company = sim.records(Kind::Company)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = sim.record(Kind::Company, &company).unwrap()["user_count"]
        .as_i64()
        .unwrap();
    let c = sim
        .create(
            Kind::Contact,
            json!({ "role": "lead", "company_ids": [company], "custom_attributes": { "x": 1 } }),
        )
        .unwrap();
    assert_eq!(c["role"], "lead");
    assert_eq!(c["external_id"], Value::Null);
    assert!(c["email"].as_str().unwrap().contains('@'));
    assert_eq!(c["custom_attributes"]["x"], 1);
    assert!(c["custom_attributes"]["plan_tier"].is_string());
    assert_eq!(c["companies"]["total_count"], 1);
    assert_eq!(
        sim.record(Kind::Company, &company).unwrap()["user_count"]
            .as_i64()
            .unwrap(),
        before + 1
    );
    let cid = c["id"].as_str().unwrap();
    let t = sim
        .create(
            Kind::Ticket,
            json!({ "contact_id": cid, "ticket_type_id": "102", "created_at": T0 - 50 }),
        )
        .unwrap();
    assert_eq!(
        (t["category"].as_str(), t["ticket_type"]["name"].as_str()),
        (Some("Back-office"), Some("Billing Task"))
    );
    assert_eq!(t["contacts"]["contacts"][0]["id"], cid);
    assert_eq!(
        (t["created_at"].as_i64(), t["updated_at"].as_i64()),
        (Some(T0 - 50), Some(T0 - 50))
    );
    let conv = sim
        .create(
            Kind::Conversation,
            json!({ "contact_id": cid, "id": "777" }),
        )
        .unwrap();
    assert_eq!(conv["id"], "777");
    assert!(sim
        .create(Kind::Conversation, json!({ "id": "777" }))
        .is_err());
    assert!(sim
        .create(Kind::Ticket, json!({ "contact_id": "nope" }))
        .is_err());
    let tag = sim.create(Kind::Tag, json!({ "name": "Made" })).unwrap();
    assert_eq!(tag["name"], "Made");
    assert!(sim.delete(Kind::Contact, cid));
    assert_eq!(
        sim.record(Kind::Company, &company).unwrap()["user_count"]
            .as_i64()
            .unwrap(),
        before
    );
}
