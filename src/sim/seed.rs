//! Deterministic data generation.
//!
//! Owns the seeded workspace (admins, ticket types and states, tags, companies, contacts,
//! tickets, conversations), the generators `/_sim` uses to fill partial records, and `churn`,
//! which makes realistic random changes. Everything draws from `State::rng`, which is seeded from
//! the config seed, so the same seed and the same sequence of calls give identical data. It does
//! not serve HTTP.

use serde_json::{json, Map, Value};

use super::objects;
use super::state::State;
use super::store::Kind;

const FIRST: &[&str] = &[
    "Joe", "Aoife", "Liam", "Emma", "Noah", "Olivia", "Sean", "Niamh", "Mateo", "Sofia", "Ravi",
    "Priya", "Chen", "Mei", "Lukas", "Anna", "Kwame", "Ama", "Diego", "Lucia", "Tom", "Grace",
    "Omar", "Layla", "Jack", "Ella", "Finn", "Sara", "Ivan", "Nina",
];
const LAST: &[&str] = &[
    "Bloggs", "Murphy", "Kelly", "Byrne", "Walsh", "Smith", "Garcia", "Silva", "Patel", "Sharma",
    "Wang", "Li", "Muller", "Schmidt", "Mensah", "Owusu", "Lopez", "Rossi", "Brown", "Wilson",
    "Haddad", "Nasser", "Ryan", "Doyle", "Novak", "Ivanova", "Berg", "Costa", "Moreau", "Dubois",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "mail.test",
    "acme.example",
    "globex.test",
    "initech.example",
    "umbrella.test",
];
const COMPANY_WORDS: &[&str] = &[
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Stark",
    "Wayne",
    "Wonka",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Vandelay",
    "Pied Piper",
    "Aperture",
    "Black Mesa",
    "Oscorp",
];
const COMPANY_SUFFIX: &[&str] = &["Ltd", "Inc", "GmbH", "Labs", "Group", "Systems"];
const INDUSTRIES: &[&str] = &[
    "Manufacturing",
    "Software",
    "Retail",
    "Finance",
    "Healthcare",
    "Logistics",
];
const PLANS: &[&str] = &["Starter", "Pro", "Enterprise"];
const TIERS: &[&str] = &["free", "pro", "enterprise"];
const PLACES: &[(&str, &str, &str, &str)] = &[
    ("Ireland", "Dublin", "IRL", "EU"),
    ("United States", "New York", "USA", "NA"),
    ("Germany", "Berlin", "DEU", "EU"),
    ("Brazil", "Sao Paulo", "BRA", "SA"),
    ("India", "Bangalore", "IND", "AS"),
    ("Australia", "Sydney", "AUS", "OC"),
];
const BROWSERS: &[&str] = &["chrome", "firefox", "safari", "edge"];
const TICKET_TITLES: &[&str] = &[
    "Checkout broken",
    "Cannot log in",
    "Export times out",
    "Invoice is wrong",
    "App crashes on start",
    "Password reset email missing",
    "Slow dashboard",
    "Webhook not firing",
];
const MESSAGES: &[&str] = &[
    "I need help with my account",
    "How do I change my plan?",
    "The export button does nothing",
    "Can I get a refund for last month?",
    "Your app is great but the search is slow",
    "Where can I download my invoices?",
    "I was charged twice",
    "Is there an API for this?",
];
const TAGS: &[&str] = &[
    "VIP",
    "Churn risk",
    "Beta tester",
    "Enterprise",
    "Bug",
    "Feedback",
];

/// Ticket types: (id, name, category, description).
const TICKET_TYPES: &[(&str, &str, &str, &str)] = &[
    (
        "100",
        "Bug Report",
        "Customer",
        "Report a bug in the product",
    ),
    (
        "101",
        "Feature Request",
        "Customer",
        "Ask for something new",
    ),
    (
        "102",
        "Billing Task",
        "Back-office",
        "Internal billing follow-up",
    ),
    (
        "103",
        "Incident",
        "Tracker",
        "Track an incident affecting many customers",
    ),
];

/// Ticket states per category: (id, category, label, ticket category).
const TICKET_STATES: &[(&str, &str, &str, &str)] = &[
    ("8570", "submitted", "Submitted", "Customer"),
    ("8571", "in_progress", "In progress", "Customer"),
    (
        "8572",
        "waiting_on_customer",
        "Waiting on customer",
        "Customer",
    ),
    ("8573", "resolved", "Resolved", "Customer"),
    ("8574", "submitted", "Submitted", "Back-office"),
    ("8575", "in_progress", "In progress", "Back-office"),
    ("8576", "resolved", "Resolved", "Back-office"),
    ("8577", "submitted", "Submitted", "Tracker"),
    ("8578", "in_progress", "In progress", "Tracker"),
    ("8579", "resolved", "Resolved", "Tracker"),
];

const THIRTY_DAYS: i64 = 30 * 86_400;

fn pick<'a>(st: &mut State, list: &[&'a str]) -> &'a str {
    list[st.rng.usize(0..list.len())]
}

/// A (created, updated) pair in the 30 days before `now`.
fn spread(st: &mut State, now: i64) -> (i64, i64) {
    let created = now - st.rng.i64(0..=THIRTY_DAYS);
    let updated = if st.rng.u8(0..4) == 0 {
        created
    } else {
        st.rng.i64(created..=now)
    };
    (created, updated)
}

/// Populates a fresh state.
pub(crate) fn seed(st: &mut State) {
    let now = st.now();
    let created = now - THIRTY_DAYS - 86_400 * 90;
    for (i, name) in ["Ada Admin", "Brian Support", "Cara Success", "Dev Ops"]
        .iter()
        .enumerate()
    {
        let id = (991_267_700 + i).to_string();
        let email = format!(
            "{}@{}.example",
            name.split(' ').next().unwrap_or("admin").to_lowercase(),
            st.workspace_id
        );
        let mut a = objects::admin(&id, name, &email);
        a["created_at"] = Value::from(created);
        a["updated_at"] = Value::from(created);
        st.write(Kind::Admin, a);
    }
    for (id, cat, label, _) in TICKET_STATES {
        st.ticket_states.push(objects::ticket_state(id, cat, label));
    }
    for (id, name, cat, desc) in TICKET_TYPES {
        let states: Vec<Value> = TICKET_STATES
            .iter()
            .filter(|s| s.3 == *cat)
            .map(|s| objects::ticket_state(s.0, s.1, s.2))
            .collect();
        let attrs: Vec<Value> = [("_default_title_", "Title", 0), ("_default_description_", "Description", 1)]
            .iter()
            .map(|(n, d, order)| {
                json!({
                    "type": "ticket_type_attribute", "id": format!("{}{}", id, 10 + order), "workspace_id": st.workspace_id,
                    "name": n, "description": d, "data_type": "string", "input_options": {}, "order": order,
                    "required_to_create": false, "required_to_create_for_contacts": false, "visible_on_create": true,
                    "visible_to_contacts": true, "default": true, "ticket_type_id": id.parse::<i64>().unwrap_or(0),
                    "archived": false, "created_at": created, "updated_at": created,
                })
            })
            .collect();
        st.write(
            Kind::TicketType,
            json!({
                "type": "ticket_type", "id": id, "category": cat, "name": name, "description": desc, "icon": "🎟️",
                "workspace_id": st.workspace_id,
                "ticket_type_attributes": { "type": "list", "ticket_type_attributes": attrs },
                "ticket_states": { "type": "list", "data": states },
                "archived": false, "created_at": created, "updated_at": created,
            }),
        );
    }
    for name in TAGS {
        let id = st.next_num("tags", 100);
        let mut t = objects::tag(&id, name);
        t["created_at"] = Value::from(created);
        t["updated_at"] = Value::from(created);
        st.write(Kind::Tag, t);
    }
    let mut company_ids = Vec::new();
    for _ in 0..st.config.companies {
        let (c, u) = spread(st, now);
        let v = gen_company(st, c, u);
        company_ids.push(v["id"].as_str().unwrap_or("").to_string());
        st.write(Kind::Company, v);
    }
    // The last company never gets contacts (when there are several), so scroll/list hiding is
    // always observable.
    let attachable = if company_ids.len() > 1 {
        company_ids.len() - 1
    } else {
        company_ids.len()
    };
    let mut contact_ids = Vec::new();
    for _ in 0..st.config.contacts {
        let (c, u) = spread(st, now);
        let mut v = gen_contact(st, c, u);
        let id = v["id"].as_str().unwrap_or("").to_string();
        if attachable > 0 && st.rng.u8(0..10) < 8 {
            let company = company_ids[st.rng.usize(0..attachable)].clone();
            attach_seeded(st, &mut v, &company);
        }
        st.write(Kind::Contact, v);
        contact_ids.push(id);
    }
    // Picking from the id list keeps seeding linear for large workspaces.
    let pick_contact = |st: &mut State| {
        if contact_ids.is_empty() {
            return None;
        }
        let i = st.rng.usize(0..contact_ids.len());
        st.cloned(Kind::Contact, &contact_ids[i])
    };
    for _ in 0..st.config.tickets {
        let (c, u) = spread(st, now);
        let contact = pick_contact(st);
        if let Some(v) = contact.and_then(|ct| gen_ticket(st, c, u, Some(ct))) {
            st.write(Kind::Ticket, v);
        }
    }
    for _ in 0..st.config.conversations {
        let (c, u) = spread(st, now);
        let contact = pick_contact(st);
        if let Some(v) = contact.and_then(|ct| gen_conversation(st, c, u, Some(ct))) {
            st.write(Kind::Conversation, v);
        }
    }
    // Seeded data predates the simulation: it is already in the search index.
    for kind in Kind::ALL {
        st.tables.t_mut(kind).mark_indexed();
    }
}

/// Attaches a contact that is about to be stored, without moving any `updated_at` (seed data
/// keeps its spread timestamps). The company's count is changed in place: companies have no
/// search form and their index keys do not change.
fn attach_seeded(st: &mut State, contact: &mut Value, company_id: &str) {
    let Some(rec) = st.tables.t_mut(Kind::Company).recs.get_mut(company_id) else {
        return;
    };
    rec.cur["user_count"] = Value::from(objects::as_int(&rec.cur["user_count"]).unwrap_or(0) + 1);
    if let Some(d) = contact["companies"]["data"].as_array_mut() {
        d.push(json!({ "type": "company", "id": company_id, "url": format!("/companies/{company_id}") }));
        contact["companies"]["total_count"] = Value::from(d.len());
    }
}

/// A realistic contact created at `created` and last updated at `updated`.
pub(crate) fn gen_contact(st: &mut State, created: i64, updated: i64) -> Value {
    let id = st.hex_id(created);
    let workspace = st.workspace_id.clone();
    let mut c = objects::contact(&id, &workspace, created);
    let first = pick(st, FIRST);
    let last = pick(st, LAST);
    let n = st.external_seq;
    st.external_seq += 1;
    let lead = st.rng.u8(0..5) == 0;
    let domain = pick(st, DOMAINS);
    let mut input = Map::new();
    input.insert("name".into(), json!(format!("{first} {last}")));
    input.insert(
        "email".into(),
        json!(format!(
            "{}.{}{}@{}",
            first.to_lowercase(),
            last.to_lowercase(),
            n,
            domain
        )),
    );
    input.insert("role".into(), json!(if lead { "lead" } else { "user" }));
    if !lead {
        input.insert("external_id".into(), json!(format!("usr_{n}")));
        input.insert("signed_up_at".into(), json!(created));
    }
    if st.rng.bool() {
        input.insert(
            "phone".into(),
            json!(format!("+353 1 555 {:04}", st.rng.u16(0..10000))),
        );
    }
    if updated > created && st.rng.bool() {
        input.insert("last_seen_at".into(), json!(st.rng.i64(created..=updated)));
    }
    let tier = pick(st, TIERS);
    input.insert("custom_attributes".into(), json!({ "plan_tier": tier }));
    objects::apply_contact(&mut c, &input);
    let (country, city, cc, cont) = PLACES[st.rng.usize(0..PLACES.len())];
    c["location"] = json!({ "type": "location", "country": country, "region": null, "city": city, "country_code": cc, "continent_code": cont });
    c["browser"] = json!(pick(st, BROWSERS));
    c["browser_language"] = json!("en");
    c["os"] = json!(if st.rng.bool() {
        "Windows 11"
    } else {
        "macOS 14"
    });
    c["updated_at"] = json!(updated);
    c
}

/// A realistic company (no contacts yet).
pub(crate) fn gen_company(st: &mut State, created: i64, updated: i64) -> Value {
    let id = st.hex_id(created);
    let n = st.next_num("company_seq", 1);
    let app = st.workspace_id.clone();
    let mut c = objects::company(&id, &format!("cmp_{n}"), &app, created);
    let name = format!("{} {}", pick(st, COMPANY_WORDS), pick(st, COMPANY_SUFFIX));
    let slug: String = name
        .to_lowercase()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let mut input = Map::new();
    input.insert("name".into(), json!(name));
    input.insert("plan".into(), json!(pick(st, PLANS)));
    input.insert("size".into(), json!(st.rng.i64(1..500)));
    input.insert(
        "website".into(),
        json!(format!("https://{slug}{n}.example")),
    );
    input.insert("industry".into(), json!(pick(st, INDUSTRIES)));
    input.insert("monthly_spend".into(), json!(st.rng.i64(0..5000)));
    input.insert(
        "remote_created_at".into(),
        json!(created.saturating_sub(st.rng.i64(0..=THIRTY_DAYS * 12))),
    );
    input.insert(
        "custom_attributes".into(),
        json!({ "region": if st.rng.bool() { "EMEA" } else { "AMER" } }),
    );
    objects::apply_company(&mut c, &input);
    c["session_count"] = json!(st.rng.i64(0..200));
    c["last_request_at"] = json!(st.rng.i64(created..=updated.max(created)));
    c["updated_at"] = json!(updated);
    c
}

fn random_contact(st: &mut State) -> Option<Value> {
    let t = st.tables.t(Kind::Contact);
    let n = t.by_created.len();
    if n == 0 {
        return None;
    }
    let i = st.rng.usize(0..n);
    let id = st
        .tables
        .t(Kind::Contact)
        .by_created
        .iter()
        .nth(i)
        .map(|(_, id)| id.clone())?;
    st.cloned(Kind::Contact, &id)
}

/// The embedded form of a ticket type.
pub(crate) fn embedded_ticket_type(tt: &Value) -> Value {
    let mut t = tt.clone();
    if let Some(m) = t.as_object_mut() {
        m.remove("ticket_type_attributes");
        m.remove("ticket_states");
    }
    t
}

/// The first state (by category order) of a ticket type.
pub(crate) fn initial_state(st: &State, tt: &Value) -> Value {
    tt["ticket_states"]["data"]
        .as_array()
        .and_then(|d| d.first().cloned())
        .or_else(|| st.ticket_states.first().cloned())
        .unwrap_or(Value::Null)
}

/// Builds a ticket; the caller stores it.
pub(crate) fn build_ticket(
    st: &mut State,
    tt: &Value,
    contact: &Value,
    attributes: &Value,
    created: i64,
    updated: i64,
) -> Value {
    let id = st.next_num("tickets", 600);
    let number = st.next_num("ticket_numbers", 1);
    let mut attrs = json!({});
    objects::merge_object(&mut attrs, attributes);
    json!({
        "type": "ticket",
        "id": id,
        "ticket_id": number,
        "category": tt["category"],
        "ticket_attributes": attrs,
        "ticket_state": initial_state(st, tt),
        "ticket_type": embedded_ticket_type(tt),
        "contacts": { "type": "contact.list", "contacts": [objects::contact_ref(contact)] },
        "admin_assignee_id": "0",
        "team_assignee_id": "0",
        "created_at": created,
        "updated_at": updated,
        "open": true,
        "linked_objects": objects::linked_objects(),
        "ticket_parts": { "type": "ticket_part.list", "ticket_parts": [], "total_count": 0 },
        "is_shared": true,
        "tags": { "type": "tag.list", "tags": [] },
    })
}

/// A realistic ticket for `contact` (or a random contact); `None` without contacts.
pub(crate) fn gen_ticket(
    st: &mut State,
    created: i64,
    updated: i64,
    contact: Option<Value>,
) -> Option<Value> {
    let contact = match contact {
        Some(c) => c,
        None => random_contact(st)?,
    };
    let type_id = if st.rng.u8(0..4) == 0 { "102" } else { "100" };
    let tt = st.cloned(Kind::TicketType, type_id)?;
    let title = pick(st, TICKET_TITLES);
    let attrs = json!({ "_default_title_": title, "_default_description_": format!("{title}: reported by {}", contact["name"].as_str().unwrap_or("a customer")) });
    let mut t = build_ticket(st, &tt, &contact, &attrs, created, updated);
    let states = tt["ticket_states"]["data"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !states.is_empty() {
        let s = states[st.rng.usize(0..states.len())].clone();
        t["open"] = json!(s["category"] != "resolved");
        t["ticket_state"] = s;
    }
    if st.rng.bool() {
        let admin = (991_267_700 + st.rng.u32(0..4)).to_string();
        t["admin_assignee_id"] = json!(admin);
    }
    let part_id = st.next_num("parts", 100);
    let body = objects::html_body(title);
    let part = objects::ticket_part(
        &part_id,
        "comment",
        Some(&body),
        created,
        objects::contact_author(&contact),
    );
    t["ticket_parts"] =
        json!({ "type": "ticket_part.list", "ticket_parts": [part], "total_count": 1 });
    Some(t)
}

/// Builds a conversation started by `contact`; the caller stores it.
pub(crate) fn build_conversation(
    st: &mut State,
    contact: &Value,
    body: &str,
    subject: &str,
    created: i64,
) -> (Value, String) {
    let id = st.next_num("conversations", 500);
    let message_id = st.next_num("messages", 403_918_330);
    let conv = json!({
        "type": "conversation",
        "id": id,
        "title": null,
        "created_at": created,
        "updated_at": created,
        "waiting_since": created,
        "snoozed_until": null,
        "open": true,
        "state": "open",
        "read": false,
        "priority": "not_priority",
        "admin_assignee_id": null,
        "team_assignee_id": null,
        "tags": { "type": "tag.list", "tags": [] },
        "conversation_rating": null,
        "source": {
            "type": "conversation",
            "id": message_id,
            "delivered_as": "customer_initiated",
            "subject": subject,
            "body": objects::html_body(body),
            "author": objects::contact_author(contact),
            "attachments": [],
            "url": null,
            "redacted": false,
        },
        "contacts": { "type": "contact.list", "contacts": [objects::contact_ref(contact)] },
        "teammates": { "type": "admin.list", "teammates": [] },
        "custom_attributes": {},
        "first_contact_reply": { "created_at": created, "type": "conversation", "url": null },
        "sla_applied": null,
        "statistics": null,
        "conversation_parts": { "type": "conversation_part.list", "conversation_parts": [], "total_count": 0 },
        "linked_objects": objects::linked_objects(),
        "ai_agent_participated": false,
    });
    (conv, message_id)
}

/// A realistic conversation for `contact` (or a random contact); `None` without contacts.
pub(crate) fn gen_conversation(
    st: &mut State,
    created: i64,
    updated: i64,
    contact: Option<Value>,
) -> Option<Value> {
    let contact = match contact {
        Some(c) => c,
        None => random_contact(st)?,
    };
    let msg = pick(st, MESSAGES);
    let (mut conv, _) = build_conversation(st, &contact, msg, "", created);
    if updated > created {
        let admin_id = (991_267_700 + st.rng.u32(0..4)).to_string();
        if let Some(admin) = st.cloned(Kind::Admin, &admin_id) {
            add_conversation_part(
                st,
                &mut conv,
                "comment",
                Some("<p>Thanks, looking into it.</p>"),
                updated,
                objects::admin_author(&admin),
            );
            conv["admin_assignee_id"] = json!(admin_id.parse::<i64>().unwrap_or(0));
            conv["waiting_since"] = Value::Null;
        }
        if st.rng.u8(0..3) == 0 {
            conv["open"] = json!(false);
            conv["state"] = json!("closed");
        }
    }
    conv["updated_at"] = json!(updated);
    Some(conv)
}

/// Appends a part to a conversation.
pub(crate) fn add_conversation_part(
    st: &mut State,
    conv: &mut Value,
    part_type: &str,
    body: Option<&str>,
    at: i64,
    author: Value,
) {
    let part_id = st.next_num("parts", 100);
    let part = objects::conversation_part(&part_id, part_type, body, at, author);
    if let Some(d) = conv["conversation_parts"]["conversation_parts"].as_array_mut() {
        d.push(part);
        let n = d.len();
        conv["conversation_parts"]["total_count"] = json!(n);
    }
}

fn random_id(st: &mut State, kind: Kind) -> Option<String> {
    let n = st.tables.t(kind).by_created.len();
    if n == 0 {
        return None;
    }
    let i = st.rng.usize(0..n);
    st.tables
        .t(kind)
        .by_created
        .iter()
        .nth(i)
        .map(|(_, id)| id.clone())
}

/// Makes `count` random realistic changes at the current simulator time and returns what changed
/// as `(kind, id)` pairs.
pub(crate) fn churn(st: &mut State, count: usize) -> Vec<(Kind, String)> {
    let mut changed = Vec::new();
    for _ in 0..count {
        let now = st.now();
        let roll = st.rng.u8(0..100);
        let done = match roll {
            0..=19 => {
                let c = gen_contact(st, now, now);
                let id = c["id"].as_str().unwrap_or("").to_string();
                st.write(Kind::Contact, c);
                let companies = st.tables.t(Kind::Company).by_created.len();
                if companies > 1 && st.rng.bool() {
                    if let Some(company) = random_id(st, Kind::Company) {
                        st.attach_company(&id, &company, true);
                    }
                }
                Some((Kind::Contact, id))
            }
            20..=49 => random_id(st, Kind::Contact).and_then(|id| {
                let mut c = st.cloned(Kind::Contact, &id)?;
                match st.rng.u8(0..3) {
                    0 => c["last_seen_at"] = json!(now),
                    1 => c["custom_attributes"]["plan_tier"] = json!(pick(st, TIERS)),
                    _ => c["phone"] = json!(format!("+353 1 555 {:04}", st.rng.u16(0..10000))),
                }
                st.write_bumped(Kind::Contact, c);
                Some((Kind::Contact, id))
            }),
            50..=64 => random_id(st, Kind::Ticket).and_then(|id| {
                let mut t = st.cloned(Kind::Ticket, &id)?;
                let tt = st.cloned(
                    Kind::TicketType,
                    t["ticket_type"]["id"].as_str().unwrap_or(""),
                )?;
                let states = tt["ticket_states"]["data"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !states.is_empty() {
                    let s = states[st.rng.usize(0..states.len())].clone();
                    t["open"] = json!(s["category"] != "resolved");
                    t["ticket_state"] = s;
                }
                st.write_bumped(Kind::Ticket, t);
                Some((Kind::Ticket, id))
            }),
            65..=74 => gen_ticket(st, now, now, None).map(|t| {
                let id = t["id"].as_str().unwrap_or("").to_string();
                st.write(Kind::Ticket, t);
                (Kind::Ticket, id)
            }),
            75..=84 => random_id(st, Kind::Conversation).and_then(|id| {
                let mut c = st.cloned(Kind::Conversation, &id)?;
                let admin = st.cloned(Kind::Admin, &st.default_admin())?;
                add_conversation_part(
                    st,
                    &mut c,
                    "comment",
                    Some("<p>Any update on this?</p>"),
                    now,
                    objects::admin_author(&admin),
                );
                c["read"] = json!(st.rng.bool());
                st.write_bumped(Kind::Conversation, c);
                Some((Kind::Conversation, id))
            }),
            85..=89 => gen_conversation(st, now, now, None).map(|c| {
                let id = c["id"].as_str().unwrap_or("").to_string();
                st.write(Kind::Conversation, c);
                (Kind::Conversation, id)
            }),
            _ => random_id(st, Kind::Company).and_then(|id| {
                let mut c = st.cloned(Kind::Company, &id)?;
                c["monthly_spend"] = json!(st.rng.i64(0..5000));
                c["last_request_at"] = json!(now);
                st.write_bumped(Kind::Company, c);
                Some((Kind::Company, id))
            }),
        };
        if let Some(d) = done {
            changed.push(d);
        }
    }
    changed
}
