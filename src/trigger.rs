//! Trigger: polling one trigger of a connection for records changed since a point in time.
//!
//! Owns rendering the trigger's request, paging, taking records out of pages, the server-side
//! filter value (widened for day-granular and exclusive comparisons), the local `cursor ≥ since`
//! filter and, for unsorted scans, sorting. Does not dedupe, run actions or keep state.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use chrono::TimeZone;
use chrono_tz::Tz;
use serde_json::{Map, Value};

use crate::http::{Connection, Failure, FailureClass, HttpRequest};
use crate::plan::{Granularity, Pagination, SendIn, Trigger};
use serde_json::value::RawValue;

use crate::record::{kind_of_raw, parse_raw, pick, Page, Record};
use crate::store::Known;
use crate::template::{lookup, Scope};

/// The value to send as the server filter so that every record with `cursor ≥ since` matches.
///
/// * second granularity: `since − 1`;
/// * day granularity (`>` X matches from the start of the day after X's day): the last second
///   of the day before `since`'s day in the account's timezone; with the timezone unknown,
///   `since − 2 days`, which is safe in every timezone.
///
/// A connector's `gt_inclusive` is not relied upon: the value is one second earlier even where
/// the API's `>` includes the given second, so nothing is lost if that ever changes; the
/// overlap is dropped locally and by the dedupe key.
pub fn server_since(trigger: &Trigger, since: i64, tz: Option<Tz>) -> i64 {
    match trigger.cursor.granularity {
        Granularity::Second => since - 1,
        Granularity::Day => match tz.and_then(|tz| start_of_day(since, tz)) {
            Some(start) => start - 1,
            None => since - 2 * 86_400,
        },
    }
}

/// Unix seconds of the start of the local day containing `ts`.
pub fn start_of_day(ts: i64, tz: Tz) -> Option<i64> {
    let local = tz.timestamp_opt(ts, 0).single()?;
    let midnight = local.date_naive().and_hms_opt(0, 0, 0)?;
    // A day may start at 01:00 where DST begins at midnight: take the earliest valid instant.
    tz.from_local_datetime(&midnight)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(midnight + chrono::Duration::hours(1)))
                .earliest()
        })
        .map(|d| d.timestamp())
}

/// A record's cursor value: an integer, or a numeric string.
pub fn cursor_of(trigger: &Trigger, record: &Value) -> Option<i64> {
    match lookup(record, &trigger.cursor_field)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A record's id as text.
pub fn id_of(trigger: &Trigger, record: &Value) -> Option<String> {
    match lookup(record, &trigger.id_field)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

enum Next {
    First,
    Token(String),
    Page(u64),
    Done,
}

/// An ongoing poll: call [`Poll::next_page`] until it returns `None`.
pub struct Poll<'a> {
    conn: &'a Connection,
    trigger: &'a Trigger,
    since: i64,
    /// Records at or after this (server time) are left to the next poll.
    until: i64,
    /// For scans: the records earlier scans listed (`None`: no earlier scan is known).
    known: Option<HashMap<String, Known>>,
    /// For scans, once read: the ids this scan listed.
    scanned: Option<Scanned>,
    scope: Scope,
    next: Next,
    /// Next-page tokens sent since the first page (of this pass, for a restarted scan): a
    /// token that comes back would page forever.
    sent: HashSet<String>,
    /// Fingerprints (id and cursor value) of the records received since the first page (of
    /// this pass, for a restarted scan).
    seen: HashSet<u64>,
    /// Hashes fingerprints (keyed per poll).
    hasher: RandomState,
    /// Pages in a row, up to the last, that held records but none not `seen` before.
    stale: u32,
    /// Pages fetched, all attempts included.
    pub pages: u64,
    /// Records received before the local filter.
    pub received: u64,
    /// The server filter value sent.
    pub server_since: i64,
}

const MAX_RESTARTS: u32 = 3;

/// Pages in a row that bring no record not already received in the poll, after which an API
/// still offering a next page is taken to page forever (checked as each page is fetched).
const STALE_PAGES: u32 = 3;

impl<'a> Poll<'a> {
    /// Starts polling `trigger` for records whose cursor is at or after `since`.
    pub async fn start(
        conn: &'a Connection,
        trigger: &'a Trigger,
        since: i64,
        options: Map<String, Value>,
    ) -> Result<Poll<'a>, Failure> {
        check_options(trigger, &options).map_err(|m| input_failure(trigger, m))?;
        let tz = if trigger.cursor.granularity == Granularity::Day {
            conn.timezone().await
        } else {
            None
        };
        let server_since = server_since(trigger, since, tz);
        let page_size = trigger.page_size;
        let mut scope = Map::new();
        scope.insert("since".into(), server_since.into());
        if let Some(p) = page_size {
            scope.insert("page_size".into(), p.into());
        }
        scope.insert("options".into(), Value::Object(options));
        Ok(Poll {
            conn,
            trigger,
            since,
            until: i64::MAX,
            known: None,
            scanned: None,
            scope: Scope::new(Value::Object(scope)),
            next: Next::First,
            sent: HashSet::new(),
            seen: HashSet::new(),
            hasher: RandomState::new(),
            stale: 0,
            pages: 0,
            received: 0,
            server_since,
        })
    }

    /// Leaves records whose cursor is at or after `until` to a later poll, and stops paging a
    /// sorted trigger once a page reaches it. A cycle passes its start (on the server's clock),
    /// so changes made while it runs, its own writes included, are the next cycle's and a
    /// recipe that changes the records it watches still finishes.
    pub fn until(&mut self, until: i64) {
        self.until = until;
    }

    /// For a scan: the records earlier scans listed. A record listed with an id not among
    /// them, or with a newer cursor value than it was last listed with, fires even when its
    /// cursor value is before `since` (marked [`Record::late`]).
    pub fn known_ids(&mut self, known: Option<HashMap<String, Known>>) {
        self.known = known;
    }

    /// For a scan that has been read: the ids it listed (every record, whatever its cursor)
    /// and which of them are late arrivals.
    pub fn scanned_ids(&mut self) -> Option<Scanned> {
        self.scanned.take()
    }

    /// The next batch of records with `since ≤ cursor < until`, in cursor order; `None` at the
    /// end.
    /// Unsorted (scan) triggers read every page first and return one sorted batch.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Record>>, Failure> {
        let picker = self.picker();
        loop {
            let Some(batch) = self.next_batch().await? else {
                return Ok(None);
            };
            let recs = picker.read(batch).collect::<Result<Vec<_>, _>>()?;
            // Skip pages whose records all fell before `since` (day widening).
            if recs.is_empty() && !matches!(self.next, Next::Done) {
                continue;
            }
            return Ok(Some(recs));
        }
    }

    /// The next page as fetched, its records not read yet: read them with [`Poll::picker`]
    /// (which does not borrow the poll, so a page can be read while the next is fetched).
    /// Unsorted (scan) triggers read every page first and return one sorted batch.
    pub async fn next_batch(&mut self) -> Result<Option<Batch>, Failure> {
        if !self.trigger.cursor.sorted {
            if matches!(self.next, Next::Done) {
                return Ok(None);
            }
            let records = self.read_all_sorted().await?;
            return Ok(Some(Batch {
                page: self.pages,
                request: String::new(),
                items: Items::Read(records),
            }));
        }
        self.fetch().await
    }

    /// Reads records out of this poll's batches.
    pub fn picker(&self) -> Picker<'a> {
        Picker {
            trigger: self.trigger,
            since: self.since,
            until: self.until,
        }
    }

    async fn read_all_sorted(&mut self) -> Result<Vec<Record>, Failure> {
        let restart = matches!(
            self.trigger.pagination,
            Pagination::Cursor {
                restart_on_failure: true,
                ..
            }
        );
        let mut restarts = 0;
        'again: loop {
            let mut all = Vec::new();
            // A restarted scan sends its tokens again; the page bound still counts every page.
            self.next = Next::First;
            self.sent.clear();
            self.seen.clear();
            self.stale = 0;
            // Every record is read: the scan's ids are kept, and records before `since` may
            // still be late arrivals.
            let picker = Picker {
                since: i64::MIN,
                until: i64::MAX,
                ..self.picker()
            };
            loop {
                // A scroll that fails past its first page cannot be resumed, whatever the
                // failure (an error, or the scroll expired: Intercom answers 404 or 400):
                // start over. Credentials and exhausted rate limits are not the scroll's fault.
                let continuing = matches!(self.next, Next::Token(_));
                match self.fetch().await {
                    Ok(Some(batch)) => {
                        for r in picker.read(batch) {
                            all.push(r?);
                        }
                    }
                    Ok(None) => break,
                    Err(f)
                        if restart
                            && restarts < MAX_RESTARTS
                            && (f.class == FailureClass::Retryable
                                || (continuing
                                    && f.status.is_some()
                                    && matches!(
                                        f.class,
                                        FailureClass::Fatal | FailureClass::Conflict
                                    ))) =>
                    {
                        restarts += 1;
                        tracing::warn!(trigger = %self.trigger.id, error = %f, "Scan failed mid-way; restarting it from the first page.");
                        continue 'again;
                    }
                    Err(f) => return Err(f),
                }
            }
            self.next = Next::Done;
            let mut ids = Vec::with_capacity(all.len());
            let mut late = HashSet::new();
            let unseen = |id: &str, ts: i64| match &self.known {
                None => false,
                Some(k) => k.get(id).is_none_or(|known| ts > known.cursor),
            };
            let mut keep = Vec::new();
            for mut r in all {
                let ts = r.ts;
                let id = id_of(self.trigger, r.fields()).unwrap_or_default();
                if r.ts < self.until {
                    if r.ts >= self.since {
                        keep.push((r, id.clone()));
                    } else if !id.is_empty() && unseen(&id, r.ts) {
                        r.late = true;
                        late.insert(id.clone());
                        keep.push((r, id.clone()));
                    }
                }
                ids.push((id, ts));
            }
            self.scanned = Some(Scanned { ids, late });
            keep.sort_by(|(a, ia), (b, ib)| a.ts.cmp(&b.ts).then_with(|| ia.cmp(ib)));
            return Ok(keep.into_iter().map(|(r, _)| r).collect());
        }
    }

    /// The poll cannot end: a repeated next-page token, pages that bring nothing new, or more
    /// pages than `max_pages`.
    fn loop_failure(&self, req: &HttpRequest, message: String, help: &str) -> Failure {
        Failure {
            class: FailureClass::Fatal,
            status: None,
            code: Some("pagination_loop".into()),
            message,
            help: Some(help.into()),
            request: req.describe(),
            attempts: 1,
            step: None,
        }
    }

    /// Fetches one page and splits it into records (read later by a [`Picker`]); `None` when
    /// paging has ended.
    async fn fetch(&mut self) -> Result<Option<Batch>, Failure> {
        let mut req = self
            .trigger
            .request
            .render(&self.scope, "options")
            .map_err(|m| input_failure(self.trigger, m))?;
        let mut retry_in_place = true;
        if !matches!(self.next, Next::Done) && self.pages >= self.trigger.max_pages {
            return Err(self.loop_failure(
                &req,
                format!(
                    "trigger `{}` returned more than {} pages in one poll (`max_pages`)",
                    self.trigger.id, self.trigger.max_pages
                ),
                "if the API really has this many pages, raise the trigger's `pagination.max_pages`; otherwise it keeps offering a next page",
            ));
        }
        match (&self.next, &self.trigger.pagination) {
            (Next::Done, _) => return Ok(None),
            (
                Next::First,
                Pagination::PageNumber {
                    page_param,
                    first_page,
                    ..
                },
            ) => {
                req.query.push((page_param.clone(), first_page.to_string()));
            }
            (Next::First, _) => {}
            (
                Next::Token(tok),
                Pagination::Cursor {
                    send_in,
                    restart_on_failure,
                    ..
                },
            ) => {
                retry_in_place = !restart_on_failure;
                self.sent.insert(tok.clone());
                match send_in {
                    SendIn::Query(param) => req.query.push((param.clone(), tok.clone())),
                    SendIn::Body(path) => set_path(
                        req.body.get_or_insert_with(|| Value::Object(Map::new())),
                        path,
                        Value::String(tok.clone()),
                    ),
                }
            }
            (Next::Page(n), Pagination::PageNumber { page_param, .. }) => {
                req.query.push((page_param.clone(), n.to_string()));
            }
            _ => return Ok(None),
        }
        let resp = self
            .conn
            .send_raw(&req, &self.trigger.errors, retry_in_place)
            .await?;
        self.pages += 1;
        let odd = |m: String| odd_response(&req, m);
        let not_json = |e: &dyn std::fmt::Display| {
            odd(format!(
                "the response is not the JSON the connector describes ({e}): {}",
                self.conn.snippet(&resp.body)
            ))
        };
        let text = std::str::from_utf8(&resp.body).map_err(|e| not_json(&e))?;
        let page = match Page::read(text, &self.trigger.records) {
            Ok(Some(page)) => page,
            Ok(None) => return Err(odd("the response is not a JSON object".into())),
            Err(e) => return Err(not_json(&e)),
        };
        let records_path = self.trigger.records.join(".");
        let list = match page.records {
            Ok(list) => list,
            Err("missing" | "null") => {
                return Err(odd(format!(
                    "the response has no `{records_path}` list of records"
                )))
            }
            Err(kind) => {
                return Err(odd(format!(
                    "`{records_path}` in the response is {kind}, not a list of records"
                )))
            }
        };
        let top = page.top;
        self.received += list.len() as u64;
        // Records are read later, by the picker, while the next page is fetched; the
        // progress check and the `until` bound need only the page's first and last records
        // (a server repeating itself repeats them too; a page in cursor order ends with its
        // newest).
        let ends: Vec<(&RawValue, Picked)> = match list.as_slice() {
            [] => vec![],
            [only] => vec![(
                *only,
                pick(only, &self.trigger.record_fields).map(Value::Object),
            )],
            [first, .., last] => [*first, *last]
                .into_iter()
                .map(|raw| {
                    (
                        raw,
                        pick(raw, &self.trigger.record_fields).map(Value::Object),
                    )
                })
                .collect(),
        };
        let fresh = self.note_records(&ends);
        // A token or a page count is text or a number; anything else is not one, and is not
        // parsed (a list could hold millions of values).
        let value_at = |path: &[String]| -> Result<Option<Value>, Failure> {
            match top.at(path).map_err(|e| not_json(&e))? {
                Some(raw) if matches!(kind_of_raw(raw), "text" | "a number") => {
                    parse_raw(raw).map(Some).map_err(|e| not_json(&e))
                }
                _ => Ok(None),
            }
        };
        self.next = match &self.trigger.pagination {
            Pagination::None => Next::Done,
            Pagination::Cursor {
                next,
                stop_on_empty,
                token_repeats,
                ..
            } => {
                let tok = value_at(next)?.and_then(|v| match v {
                    Value::String(s) if !s.is_empty() => Some(s),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                });
                match (stop_on_empty, tok) {
                    (true, _) if list.is_empty() => Next::Done,
                    (_, Some(t)) if !token_repeats && self.sent.contains(&t) => {
                        // Checked before the page's records are used: the page is as
                        // suspect as any other answer the connector does not describe.
                        let shown = shorten(&self.conn.scrub(&t), 40);
                        return Err(self.loop_failure(
                            &req,
                            format!(
                                "trigger `{}` would page forever: the API returned the same next-page token again on page {} (`{shown}`)",
                                self.trigger.id, self.pages
                            ),
                            "check the trigger's `pagination`: `next` must be the path of the following page's token, and the API must read it where `send_in` and `param` put it; an API that sends the same token with every page (a scroll session) needs `token_repeats: true`",
                        ));
                    }
                    (_, Some(t)) => Next::Token(t),
                    (_, None) => Next::Done,
                }
            }
            Pagination::PageNumber {
                total_pages,
                first_page,
                ..
            } => {
                let current = match self.next {
                    Next::Page(n) => n,
                    _ => *first_page,
                };
                let total = match total_pages {
                    Some(path) => value_at(path)?.as_ref().and_then(Value::as_u64),
                    None => None,
                };
                match total {
                    Some(t) if current >= t => Next::Done,
                    _ if list.is_empty() => Next::Done,
                    _ => Next::Page(current + 1),
                }
            }
        };
        if self.until < i64::MAX && self.trigger.cursor.sorted && !matches!(self.next, Next::Done) {
            // Sorted oldest first: once a page reaches `until`, later pages hold only records
            // for the next poll. (A malformed last record is left to the picker to report.)
            let last = ends
                .last()
                .and_then(|(_, fields)| fields.as_ref().ok())
                .and_then(|fields| cursor_of(self.trigger, fields));
            if last.is_some_and(|c| c >= self.until) {
                self.next = Next::Done;
            }
        }
        if !matches!(self.next, Next::Done) && fresh == Some(false) {
            self.stale += 1;
            if self.stale >= STALE_PAGES {
                // As for a repeated token, this page is not used: it holds nothing new anyway.
                return Err(self.loop_failure(
                    &req,
                    format!(
                        "trigger `{}` would page forever: the last {} pages (up to page {}) began and ended with records this poll had already received",
                        self.trigger.id, self.stale, self.pages
                    ),
                    "the API offers next pages but returns the same records; check the trigger's `pagination`: the API must read the next-page token (or page number) where `send_in` and `param` (or `page_param`) put it",
                ));
            }
        } else if fresh == Some(true) {
            self.stale = 0;
        }
        Ok(Some(Batch {
            page: self.pages,
            request: req.describe(),
            items: Items::Raw(list.into_iter().map(RawValue::to_owned).collect()),
        }))
    }

    /// Notes a page's first and last records as received: whether one of them is new in this
    /// poll (`None`
    /// for a page without records, which neither shows progress nor its lack: the last page
    /// of a scroll is empty). A record is known by its id and cursor value, so one changed
    /// while the poll pages, and so listed again, is new; one that cannot be read, by its
    /// text.
    fn note_records(&mut self, list: &[(&RawValue, Picked)]) -> Option<bool> {
        let mut fresh = None;
        for (raw, fields) in list {
            let print = match fields
                .as_ref()
                .map(|f| (lookup(f, &self.trigger.id_field), f))
            {
                Ok((Some(Value::String(id)), f)) => self
                    .hasher
                    .hash_one((id.as_str(), cursor_of(self.trigger, f))),
                Ok((Some(Value::Number(id)), f)) => self
                    .hasher
                    .hash_one((id.to_string(), cursor_of(self.trigger, f))),
                _ => self.hasher.hash_one(raw.get()),
            };
            let new = self.seen.insert(print);
            fresh = Some(fresh.unwrap_or(false) || new);
        }
        fresh
    }
}

/// What a complete scan listed.
#[derive(Debug)]
pub struct Scanned {
    /// Every record's id and cursor value.
    pub ids: Vec<(String, i64)>,
    /// Ids returned although their cursor is before `since`, because no earlier scan listed
    /// them.
    pub late: HashSet<String>,
}

/// One fetched page (or, for a scan, every page sorted).
#[derive(Debug)]
pub struct Batch {
    /// Page number within the poll (attempts included).
    pub page: u64,
    /// `METHOD /path` of the request, for errors.
    request: String,
    items: Items,
}

/// A record's picked fields (an object), or why they cannot be read.
type Picked = Result<Value, String>;

#[derive(Debug)]
enum Items {
    /// Records as the API sent them, not read yet.
    Raw(Vec<Box<RawValue>>),
    /// Records already read (and filtered).
    Read(Vec<Record>),
}

impl Batch {
    /// How many records the batch holds (before the `cursor ≥ since` filter).
    pub fn len(&self) -> usize {
        match &self.items {
            Items::Raw(r) => r.len(),
            Items::Read(r) => r.len(),
        }
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads polled records: parses the fields the runtime needs (id, cursor, dedupe key) and
/// drops records before `since`. A copy of the poll's settings, so records of one page can be
/// read while the poll fetches the next.
#[derive(Debug, Clone, Copy)]
pub struct Picker<'a> {
    trigger: &'a Trigger,
    since: i64,
    until: i64,
}

impl<'a> Picker<'a> {
    /// The batch's records with `cursor ≥ since`, in order; a record that is not an object or
    /// has no whole-number cursor is an error naming it.
    pub fn read(
        self,
        batch: Batch,
    ) -> Box<dyn Iterator<Item = Result<Record, Failure>> + Send + 'a> {
        match batch.items {
            Items::Read(records) => Box::new(records.into_iter().map(Ok)),
            Items::Raw(raws) => {
                let (page, request) = (batch.page, batch.request);
                Box::new(
                    raws.into_iter()
                        .enumerate()
                        .filter_map(move |(i, raw)| self.pick(page, &request, i, raw).transpose()),
                )
            }
        }
    }

    fn pick(
        self,
        page: u64,
        request: &str,
        i: usize,
        raw: Box<RawValue>,
    ) -> Result<Option<Record>, Failure> {
        let odd = |message: String| Failure {
            request: request.to_string(),
            ..odd_failure(message)
        };
        let fields = pick(&raw, &self.trigger.record_fields)
            .map(Value::Object)
            .map_err(|m| odd(format!("record #{} on page {page} {m}", i + 1)))?;
        let Some(c) = cursor_of(self.trigger, &fields) else {
            return Err(odd(format!(
                "record #{} on page {page} has no whole-number `{}`",
                i + 1,
                self.trigger.cursor_field.join(".")
            )));
        };
        Ok((c >= self.since && c < self.until).then(|| Record::new(raw, fields, c)))
    }
}

/// At most `max` characters of `s`, with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn odd_response(req: &HttpRequest, message: String) -> Failure {
    Failure {
        request: req.describe(),
        ..odd_failure(message)
    }
}

fn odd_failure(message: String) -> Failure {
    Failure {
        class: FailureClass::Fatal,
        status: None,
        code: Some("unexpected_response".into()),
        message,
        help: Some("the API answered in a shape the connector does not describe; check the connector's `records`/`cursor` paths".into()),
        request: String::new(),
        attempts: 1,
        step: None,
    }
}

fn input_failure(trigger: &Trigger, message: String) -> Failure {
    Failure {
        class: FailureClass::Fatal,
        status: None,
        code: Some("invalid_input".into()),
        message,
        help: None,
        request: format!("trigger {}", trigger.id),
        attempts: 0,
        step: None,
    }
}

fn check_options(trigger: &Trigger, options: &Map<String, Value>) -> Result<(), String> {
    crate::action::check_fields("option", &trigger.options, options)
}

/// Sets `value` at a path, creating objects on the way.
pub fn set_path(v: &mut Value, path: &[String], value: Value) {
    let mut cur = v;
    for (i, seg) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(m) = cur else { return };
        if i == path.len() - 1 {
            m.insert(seg.clone(), value);
            return;
        }
        cur = m
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_of_day_in_timezone() {
        let tz: Tz = "Europe/Dublin".parse().unwrap();
        // 2026-07-10 15:00 UTC = 16:00 in Dublin (IST, UTC+1); local midnight = 23:00 UTC the day before.
        let ts = 1_783_695_600;
        assert_eq!(start_of_day(ts, tz), Some(1_783_638_000));
        let utc: Tz = "UTC".parse().unwrap();
        assert_eq!(start_of_day(ts, utc), Some(1_783_641_600));
    }

    #[test]
    fn set_path_creates_objects() {
        let mut v = serde_json::json!({"pagination": {"per_page": 5}});
        set_path(
            &mut v,
            &["pagination".into(), "starting_after".into()],
            "abc".into(),
        );
        assert_eq!(
            v,
            serde_json::json!({"pagination": {"per_page": 5, "starting_after": "abc"}})
        );
    }
}
