//! In-memory object store.
//!
//! Owns every simulated object as its full Intercom JSON shape, the ordered indices used by
//! search (`(created_at, id)` and `(updated_at, id)` per kind), the previous snapshot shown to
//! search while a write is inside the index-lag window, and each record's serialized search form
//! (rebuilt on write, so a search page is a concatenation). It does not know HTTP, query grammar or seeding.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Object kinds held by the simulator; the serde names are the plural URL segments of `/_sim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// Contacts (users and leads).
    #[serde(rename = "contacts")]
    Contact,
    /// Companies.
    #[serde(rename = "companies")]
    Company,
    /// Tickets.
    #[serde(rename = "tickets")]
    Ticket,
    /// Conversations.
    #[serde(rename = "conversations")]
    Conversation,
    /// Tags.
    #[serde(rename = "tags")]
    Tag,
    /// Notes on contacts.
    #[serde(rename = "notes")]
    Note,
    /// Data events submitted through `POST /events`.
    #[serde(rename = "events")]
    Event,
    /// Admins (teammates).
    #[serde(rename = "admins")]
    Admin,
    /// Ticket types.
    #[serde(rename = "ticket_types")]
    TicketType,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 9] = [
        Kind::Contact,
        Kind::Company,
        Kind::Ticket,
        Kind::Conversation,
        Kind::Tag,
        Kind::Note,
        Kind::Event,
        Kind::Admin,
        Kind::TicketType,
    ];

    /// The plural URL segment (`contacts`, `ticket_types`, ...).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Contact => "contacts",
            Kind::Company => "companies",
            Kind::Ticket => "tickets",
            Kind::Conversation => "conversations",
            Kind::Tag => "tags",
            Kind::Note => "notes",
            Kind::Event => "events",
            Kind::Admin => "admins",
            Kind::TicketType => "ticket_types",
        }
    }

    /// Parses a plural URL segment.
    pub fn from_plural(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == s)
    }

    fn index(self) -> usize {
        Kind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// One stored object.
#[derive(Debug, Clone)]
pub(crate) struct Rec {
    /// The current full object.
    pub cur: Value,
    /// Simulator time of the last write.
    pub written_at: i64,
    /// Serialized search form of `cur` (empty for kinds without search), built on every write
    /// so that a search page is a concatenation.
    pub json: Arc<str>,
    /// The version search shows while `cur` is inside the lag window (`None`: invisible).
    pub prev: Option<Arc<Snapshot>>,
}

/// A previous version of a record with its serialized search form.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub value: Value,
    pub json: Arc<str>,
}

/// A record as search returns it: conversations are listed without `conversation_parts`.
struct SearchForm<'a>(Kind, &'a Value);

impl serde::Serialize for SearchForm<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match (self.0, self.1) {
            (Kind::Conversation, Value::Object(m)) => {
                let mut map = ser.serialize_map(None)?;
                for (k, v) in m.iter().filter(|(k, _)| k.as_str() != "conversation_parts") {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            (_, v) => v.serialize(ser),
        }
    }
}

/// The serialized search form of a record (empty for kinds search never returns).
pub(crate) fn search_json(kind: Kind, v: &Value) -> Arc<str> {
    if !matches!(kind, Kind::Contact | Kind::Conversation | Kind::Ticket) {
        return Arc::from("");
    }
    // Serializing a `Value` cannot fail: keys are strings and there is no I/O.
    Arc::from(serde_json::to_string(&SearchForm(kind, v)).unwrap_or_default())
}

/// All objects of one kind plus their ordered indices.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    kind: Kind,
    pub recs: HashMap<String, Rec>,
    pub by_created: BTreeSet<(i64, String)>,
    pub by_updated: BTreeSet<(i64, String)>,
    /// The latest `written_at` of any record (drives the lag fast-path decision).
    pub last_write: i64,
}

/// Reads an integer field that may be stored as a number or a numeric string.
pub(crate) fn int_field(v: &Value, key: &str) -> i64 {
    match v.get(key) {
        Some(Value::Number(n)) => n
            .as_i64()
            .unwrap_or_else(|| n.as_f64().unwrap_or(0.0) as i64),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

impl Table {
    fn new(kind: Kind) -> Table {
        Table {
            kind,
            recs: HashMap::new(),
            by_created: BTreeSet::new(),
            by_updated: BTreeSet::new(),
            last_write: 0,
        }
    }

    /// The current version of a record.
    pub(crate) fn get(&self, id: &str) -> Option<&Value> {
        self.recs.get(id).map(|r| &r.cur)
    }

    /// Inserts or replaces a record written at `now`; `lag` decides which version search keeps
    /// showing meanwhile. The value's `created_at`/`updated_at` feed the indices.
    pub(crate) fn put(&mut self, id: &str, value: Value, now: i64, lag: i64) {
        let created = int_field(&value, "created_at");
        let updated = int_field(&value, "updated_at");
        let prev = match self.recs.remove(id) {
            Some(old) => {
                self.by_created
                    .remove(&(int_field(&old.cur, "created_at"), id.to_string()));
                self.by_updated
                    .remove(&(int_field(&old.cur, "updated_at"), id.to_string()));
                // The old version was already indexed if it is older than the lag; otherwise the
                // version search shows is still whatever it showed before that write.
                if lag <= 0 {
                    // Without lag search always reads `cur`; keeping old versions only costs memory.
                    None
                } else if now.saturating_sub(old.written_at) >= lag {
                    Some(Arc::new(Snapshot {
                        value: old.cur,
                        json: old.json,
                    }))
                } else {
                    old.prev
                }
            }
            None => None,
        };
        self.by_created.insert((created, id.to_string()));
        self.by_updated.insert((updated, id.to_string()));
        self.last_write = self.last_write.max(now);
        self.recs.insert(
            id.to_string(),
            Rec {
                json: search_json(self.kind, &value),
                cur: value,
                written_at: now,
                prev,
            },
        );
    }

    /// Removes a record; search stops showing it immediately.
    pub(crate) fn remove(&mut self, id: &str) -> Option<Value> {
        let old = self.recs.remove(id)?;
        self.by_created
            .remove(&(int_field(&old.cur, "created_at"), id.to_string()));
        self.by_updated
            .remove(&(int_field(&old.cur, "updated_at"), id.to_string()));
        Some(old.cur)
    }

    /// Marks every record as long indexed (seed data is visible to search at once).
    pub(crate) fn mark_indexed(&mut self) {
        for rec in self.recs.values_mut() {
            rec.written_at = i64::MIN / 4;
        }
        self.last_write = i64::MIN / 4;
    }

    /// Records in `(created_at, id)` order.
    pub(crate) fn ordered(&self) -> Vec<&Value> {
        self.by_created
            .iter()
            .filter_map(|(_, id)| self.get(id))
            .collect()
    }

    /// True when no record is inside the lag window, so search may read current versions.
    pub(crate) fn settled(&self, now: i64, lag: i64) -> bool {
        lag <= 0 || now.saturating_sub(self.last_write) >= lag
    }
}

/// The visible-to-search version of a record and its search form, honouring index lag.
pub(crate) fn visible(rec: &Rec, now: i64, lag: i64) -> Option<(&Value, &str)> {
    if lag <= 0 || now.saturating_sub(rec.written_at) >= lag {
        Some((&rec.cur, &rec.json))
    } else {
        rec.prev.as_deref().map(|p| (&p.value, &*p.json))
    }
}

/// Every table, indexed by kind.
#[derive(Debug, Clone)]
pub(crate) struct Tables {
    tables: [Table; 9],
}

impl Default for Tables {
    fn default() -> Tables {
        Tables {
            tables: Kind::ALL.map(Table::new),
        }
    }
}

impl Tables {
    /// The table of one kind.
    pub(crate) fn t(&self, kind: Kind) -> &Table {
        &self.tables[kind.index()]
    }

    /// The table of one kind, mutably.
    pub(crate) fn t_mut(&mut self, kind: Kind) -> &mut Table {
        &mut self.tables[kind.index()]
    }
}
