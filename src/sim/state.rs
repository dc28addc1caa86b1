//! Mutable simulator state.
//!
//! Owns everything behind the simulator's single lock: live configuration, clock, tables, id
//! counters, random generators, the rate-limit window, the open company scroll, the audit log and
//! the injected faults, plus the write helpers that keep timestamps, indices and relationships
//! (contact ↔ company counts, tags) consistent. HTTP handling lives in `routes`/`control`; object
//! shapes in `objects`; data generation in `seed`.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::audit::AuditEntry;
use super::clock::Clock;
use super::faults::Faults;
use super::objects;
use super::store::{Kind, Tables};
use super::SimConfig;

/// The open company scroll (at most one per app).
#[derive(Debug, Clone)]
pub(crate) struct Scroll {
    /// The current `scroll_param`.
    pub param: String,
    /// Position of the last company served, in `(created_at, id)` order.
    pub last: Option<(i64, String)>,
    /// Simulator time of the last use (expiry after 60 s idle).
    pub last_used: i64,
}

/// Everything behind the simulator's lock.
#[derive(Debug)]
pub(crate) struct State {
    pub config: SimConfig,
    pub clock: Clock,
    pub tables: Tables,
    pub ticket_states: Vec<Value>,
    counters: HashMap<&'static str, u64>,
    /// Ids and churn; seeded from the config seed so runs are reproducible.
    pub rng: fastrand::Rng,
    pub fault_rng: fastrand::Rng,
    pub req_rng: fastrand::Rng,
    /// Rate-limit window start and requests counted in it.
    pub window: (i64, u32),
    pub scroll: Option<Scroll>,
    pub audit: Vec<AuditEntry>,
    pub audit_seq: u64,
    /// Intercom requests being answered now, and the most at once since the last reset.
    pub in_flight: (usize, usize),
    pub faults: Faults,
    pub workspace_id: String,
    /// Next `usr_N` number.
    pub external_seq: u64,
    /// The OAuth app and the codes and tokens it issued.
    pub oauth: super::oauth::OAuth,
}

impl State {
    /// Fresh state with seeded data.
    pub(crate) fn new(config: SimConfig) -> State {
        let mut rng = fastrand::Rng::with_seed(config.seed);
        let workspace_id: String = (0..8)
            .map(|_| {
                let c = rng.u8(0..36);
                if c < 10 {
                    char::from(b'0' + c)
                } else {
                    char::from(b'a' + c - 10)
                }
            })
            .collect();
        let mut st = State {
            clock: Clock::new(config.start_time, config.frozen_clock),
            tables: Tables::default(),
            ticket_states: Vec::new(),
            counters: HashMap::new(),
            rng,
            fault_rng: fastrand::Rng::with_seed(config.seed ^ 0x5eed_fa17),
            req_rng: fastrand::Rng::with_seed(config.seed ^ 0x0123_4567),
            window: (0, 0),
            scroll: None,
            audit: Vec::new(),
            audit_seq: 0,
            in_flight: (0, 0),
            faults: Faults::default(),
            workspace_id,
            external_seq: 1,
            oauth: super::oauth::OAuth::default(),
            config,
        };
        super::seed::seed(&mut st);
        st
    }

    /// Simulator time.
    pub(crate) fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Current search index lag.
    pub(crate) fn lag(&self) -> i64 {
        self.config.search_lag_secs
    }

    /// Next numeric id of a sequence (`tickets`, `tags`, ...), as a string.
    pub(crate) fn next_num(&mut self, seq: &'static str, start: u64) -> String {
        let n = self.counters.entry(seq).or_insert(start);
        let id = *n;
        *n += 1;
        id.to_string()
    }

    /// A 24-hex id in the style of Intercom contact/company ids (timestamp prefix).
    pub(crate) fn hex_id(&mut self, ts: i64) -> String {
        let mut id;
        loop {
            id = format!("{:08x}{:016x}", ts as u32, self.rng.u64(..));
            if self.tables.t(Kind::Contact).get(&id).is_none()
                && self.tables.t(Kind::Company).get(&id).is_none()
            {
                return id;
            }
        }
    }

    /// A request id in UUID form.
    pub(crate) fn request_id(&mut self) -> String {
        let r = &mut self.req_rng;
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            r.u32(..),
            r.u16(..),
            r.u16(..0x1000),
            r.u16(0x8000..0xc000),
            r.u64(..0x1_0000_0000_0000)
        )
    }

    /// The current version of a record.
    pub(crate) fn get(&self, kind: Kind, id: &str) -> Option<&Value> {
        self.tables.t(kind).get(id)
    }

    /// A clone of the current version of a record.
    pub(crate) fn cloned(&self, kind: Kind, id: &str) -> Option<Value> {
        self.get(kind, id).cloned()
    }

    /// Stores a record as written now (indices and lag snapshot follow).
    pub(crate) fn write(&mut self, kind: Kind, value: Value) {
        let id = objects::as_id(&value["id"]).unwrap_or_default();
        let now = self.now();
        let lag = self.lag();
        self.tables.t_mut(kind).put(&id, value, now, lag);
    }

    /// Stores a record with `updated_at` bumped to now.
    pub(crate) fn write_bumped(&mut self, kind: Kind, mut value: Value) {
        value["updated_at"] = Value::from(self.now());
        self.write(kind, value);
    }

    /// The first admin's id (default author for notes and tags).
    pub(crate) fn default_admin(&self) -> String {
        self.tables
            .t(Kind::Admin)
            .ordered()
            .first()
            .and_then(|a| a["id"].as_str())
            .unwrap_or("991267700")
            .to_string()
    }

    /// Finds a contact by email (users before leads), case-insensitively.
    pub(crate) fn contact_by_email(&self, email: &str) -> Option<&Value> {
        let t = self.tables.t(Kind::Contact);
        let mut found: Option<&Value> = None;
        for c in t.ordered() {
            if c["email"]
                .as_str()
                .is_some_and(|e| e.eq_ignore_ascii_case(email))
            {
                if c["role"] == "user" {
                    return Some(c);
                }
                found = found.or(Some(c));
            }
        }
        found
    }

    /// Finds a contact by external id.
    pub(crate) fn contact_by_external_id(&self, external_id: &str) -> Option<&Value> {
        self.tables
            .t(Kind::Contact)
            .recs
            .values()
            .map(|r| &r.cur)
            .find(|c| c["external_id"] == external_id)
    }

    /// Attaches a contact to a company (no-op when attached). `bump` updates both `updated_at`s.
    pub(crate) fn attach_company(&mut self, contact_id: &str, company_id: &str, bump: bool) {
        let (Some(mut contact), Some(mut company)) = (
            self.cloned(Kind::Contact, contact_id),
            self.cloned(Kind::Company, company_id),
        ) else {
            return;
        };
        let list = &mut contact["companies"];
        let already = list["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|c| c["id"] == company_id));
        if !already {
            if let Some(d) = list["data"].as_array_mut() {
                d.push(json!({ "type": "company", "id": company_id, "url": format!("/companies/{company_id}") }));
            }
            let n = list["data"].as_array().map_or(0, Vec::len);
            list["total_count"] = Value::from(n);
            company["user_count"] =
                Value::from(objects::as_int(&company["user_count"]).unwrap_or(0) + 1);
        }
        if bump {
            self.write_bumped(Kind::Contact, contact);
            self.write_bumped(Kind::Company, company);
        } else {
            self.write(Kind::Contact, contact);
            self.write(Kind::Company, company);
        }
    }

    /// Detaches every contact attached to a company (before the company is deleted).
    pub(crate) fn detach_all_from_company(&mut self, company_id: &str) {
        let attached: Vec<String> = self
            .tables
            .t(Kind::Contact)
            .recs
            .iter()
            .filter(|(_, r)| {
                r.cur["companies"]["data"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|c| c["id"] == company_id))
            })
            .map(|(cid, _)| cid.clone())
            .collect();
        for cid in attached {
            self.detach_company(&cid, company_id, false);
        }
    }

    /// Detaches a contact from a company; returns whether it was attached.
    pub(crate) fn detach_company(
        &mut self,
        contact_id: &str,
        company_id: &str,
        bump_contact: bool,
    ) -> bool {
        let Some(mut contact) = self.cloned(Kind::Contact, contact_id) else {
            return false;
        };
        let Some(d) = contact["companies"]["data"].as_array_mut() else {
            return false;
        };
        let before = d.len();
        d.retain(|c| c["id"] != company_id);
        let n = d.len();
        if n == before {
            return false;
        }
        contact["companies"]["total_count"] = Value::from(n);
        if bump_contact {
            self.write_bumped(Kind::Contact, contact);
        } else {
            self.write(Kind::Contact, contact);
        }
        if let Some(mut company) = self.cloned(Kind::Company, company_id) {
            company["user_count"] =
                Value::from((objects::as_int(&company["user_count"]).unwrap_or(1) - 1).max(0));
            self.write_bumped(Kind::Company, company);
        }
        true
    }

    /// Attaches a tag to a contact, ticket or conversation and bumps it. Returns the applied tag.
    pub(crate) fn apply_tag(
        &mut self,
        kind: Kind,
        id: &str,
        tag_id: &str,
        admin_id: &str,
    ) -> Option<Value> {
        let tag = self.cloned(Kind::Tag, tag_id)?;
        let mut obj = self.cloned(kind, id)?;
        let name = tag["name"].as_str().unwrap_or("").to_string();
        let now = self.now();
        match kind {
            Kind::Contact => {
                let list = &mut obj["tags"];
                if let Some(d) = list["data"].as_array_mut() {
                    if !d.iter().any(|t| t["id"] == tag_id) {
                        d.push(objects::tag_ref(tag_id));
                    }
                }
                let n = list["data"].as_array().map_or(0, Vec::len);
                list["total_count"] = Value::from(n);
            }
            _ => {
                if !obj["tags"]["tags"].is_array() {
                    obj["tags"] = json!({ "type": "tag.list", "tags": [] });
                }
                if let Some(d) = obj["tags"]["tags"].as_array_mut() {
                    if !d.iter().any(|t| t["id"] == tag_id) {
                        d.push(objects::applied_tag(tag_id, &name, now, admin_id));
                    }
                }
            }
        }
        self.write_bumped(kind, obj);
        Some(objects::applied_tag(tag_id, &name, now, admin_id))
    }

    /// Removes a tag from an object and bumps it. `None` when the tag was not attached.
    pub(crate) fn remove_tag(
        &mut self,
        kind: Kind,
        id: &str,
        tag_id: &str,
        admin_id: &str,
    ) -> Option<Value> {
        let tag = self.cloned(Kind::Tag, tag_id)?;
        let mut obj = self.cloned(kind, id)?;
        let removed = if kind == Kind::Contact {
            let list = &mut obj["tags"];
            let d = list["data"].as_array_mut()?;
            let before = d.len();
            d.retain(|t| t["id"] != tag_id);
            let n = d.len();
            list["total_count"] = Value::from(n);
            n != before
        } else {
            let d = obj["tags"]["tags"].as_array_mut()?;
            let before = d.len();
            d.retain(|t| t["id"] != tag_id);
            d.len() != before
        };
        if !removed {
            return None;
        }
        self.write_bumped(kind, obj);
        let name = tag["name"].as_str().unwrap_or("");
        Some(objects::applied_tag(tag_id, name, self.now(), admin_id))
    }

    /// Removes a tag from every object that carries it (used when the tag is deleted).
    pub(crate) fn strip_tag_everywhere(&mut self, tag_id: &str) {
        for kind in [Kind::Contact, Kind::Ticket, Kind::Conversation] {
            let ids: Vec<String> = self
                .tables
                .t(kind)
                .recs
                .iter()
                .filter(|(_, r)| {
                    let list = if kind == Kind::Contact {
                        &r.cur["tags"]["data"]
                    } else {
                        &r.cur["tags"]["tags"]
                    };
                    list.as_array()
                        .is_some_and(|d| d.iter().any(|t| t["id"] == tag_id))
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                let admin = self.default_admin();
                self.remove_tag(kind, &id, tag_id, &admin);
            }
        }
    }
}
