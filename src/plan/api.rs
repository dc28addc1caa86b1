//! Compiled API descriptions: what the runtime reads of a connector, with every path split,
//! every duration parsed and every class resolved once, when the plan is built. Runtime code
//! takes these, never a `*Spec`.
//!
//! Owns the conversion of the connector's header, error rules, pagination, cursor and typed
//! fields from their serde shapes. Checks live in `plan` (they report located problems);
//! these conversions run only on specs that passed them.

use std::time::Duration;

use indexmap::IndexMap;
use serde_json::Value;

use crate::failure::FailureClass;
use crate::spec::{
    ConnectorHeaderSpec, CursorSpec, ErrorRuleSpec, FieldSpec, FieldTypeSpec, GranularitySpec,
    MethodSpec, OnErrorSpec, PaginationSpec, SendInSpec, SortSpec, StopSpec,
};

/// Splits a dotted path (`pages.next`); empty is the whole value.
pub(crate) fn split_path(p: &str) -> Vec<String> {
    if p.is_empty() {
        vec![]
    } else {
        p.split('.').map(str::to_string).collect()
    }
}

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

impl Method {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

impl From<MethodSpec> for Method {
    fn from(m: MethodSpec) -> Method {
        match m {
            MethodSpec::Get => Method::Get,
            MethodSpec::Post => Method::Post,
            MethodSpec::Put => Method::Put,
            MethodSpec::Patch => Method::Patch,
            MethodSpec::Delete => Method::Delete,
        }
    }
}

/// Which answers get which failure class.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorRule {
    /// Statuses it matches.
    pub status: Vec<u16>,
    /// Error code it matches; any when `None`.
    pub code: Option<String>,
    /// The class it assigns.
    pub class: FailureClass,
    /// How to fix it.
    pub help: Option<String>,
    /// For a retryable rule: keep retrying until this long has passed since the first try.
    pub retry_for: Option<Duration>,
}

impl ErrorRule {
    /// Whether it matches a status and error code.
    pub fn matches(&self, status: u16, code: Option<&str>) -> bool {
        let code_ok = match (&self.code, code) {
            (None, _) => true,
            (Some(want), Some(got)) => want == got,
            (Some(_), None) => false,
        };
        code_ok && self.status.contains(&status)
    }
}

/// Compiles error rules (already checked: `retry_for` parses).
pub(crate) fn error_rules(rules: &[ErrorRuleSpec]) -> Vec<ErrorRule> {
    rules
        .iter()
        .map(|r| ErrorRule {
            status: r.status.clone(),
            code: r.code.clone(),
            class: r.class.into(),
            help: r.help.clone(),
            retry_for: r
                .retry_for
                .as_deref()
                .and_then(|d| super::parse_duration(d).ok())
                .map(|s| Duration::from_secs(s.max(0) as u64)),
        })
        .collect()
}

/// How a `conflict` becomes the existing object: the id follows `id_after` in the error
/// message, and action `then` is run with it as input `input`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnConflict {
    /// The id follows this text in the error message.
    pub id_after: String,
    /// The action to run with the id.
    pub then: String,
    /// Its input that takes the id.
    pub input: String,
}

/// What a step does when it fails for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// End the record's chain as a dead letter.
    Stop,
    /// Go on with a `null` output.
    Skip,
    /// Leave the record unfinished; the next cycle tries the step again.
    Retry,
}

impl From<OnErrorSpec> for OnError {
    fn from(o: OnErrorSpec) -> OnError {
        match o {
            OnErrorSpec::Stop => OnError::Stop,
            OnErrorSpec::Skip => OnError::Skip,
            OnErrorSpec::Retry => OnError::Retry,
        }
    }
}

/// A value's type, for inputs, options and outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// Text.
    String,
    /// A whole number.
    Integer,
    /// A number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// Unix seconds.
    Timestamp,
    /// An object.
    Object,
    /// A list.
    Array,
    /// Anything.
    Any,
}

impl From<FieldTypeSpec> for FieldType {
    fn from(t: FieldTypeSpec) -> FieldType {
        match t {
            FieldTypeSpec::String => FieldType::String,
            FieldTypeSpec::Integer => FieldType::Integer,
            FieldTypeSpec::Number => FieldType::Number,
            FieldTypeSpec::Boolean => FieldType::Boolean,
            FieldTypeSpec::Timestamp => FieldType::Timestamp,
            FieldTypeSpec::Object => FieldType::Object,
            FieldTypeSpec::Array => FieldType::Array,
            FieldTypeSpec::Any => FieldType::Any,
        }
    }
}

/// A typed field (an input, an option, a documented output).
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Its type.
    pub ty: FieldType,
    /// For lists: the items' type.
    pub items: Option<FieldType>,
    /// Whether it must be given.
    pub required: bool,
    /// The values allowed, when restricted.
    pub allowed: Option<Vec<Value>>,
    /// For people.
    pub description: String,
    /// An example value.
    pub example: Option<Value>,
}

/// Compiles typed fields.
pub(crate) fn fields(specs: &IndexMap<String, FieldSpec>) -> IndexMap<String, Field> {
    specs
        .iter()
        .map(|(k, f)| {
            let field = Field {
                ty: f.ty.into(),
                items: f.items.map(Into::into),
                required: f.required,
                allowed: f.allowed.clone(),
                description: f.description.clone(),
                example: f.example.clone(),
            };
            (k.clone(), field)
        })
        .collect()
}

/// How the next page is asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Pagination {
    /// One request.
    None,
    /// A token from each response.
    Cursor {
        /// Path of the next token in a response.
        next: Vec<String>,
        /// Where the token is sent.
        send_in: SendIn,
        /// The page ends paging when no token comes back (`false`), or when it has no records
        /// (`true`: scroll APIs, whose token is always present).
        stop_on_empty: bool,
        /// A failed page means starting over from the first.
        restart_on_failure: bool,
        /// The token is the same on every page (a scroll session).
        token_repeats: bool,
    },
    /// Page numbers in the query.
    PageNumber {
        /// The query parameter.
        page_param: String,
        /// The first page's number.
        first_page: u64,
        /// Path of the page count in a response.
        total_pages: Option<Vec<String>>,
    },
}

/// Where a cursor pagination's token goes.
#[derive(Debug, Clone, PartialEq)]
pub enum SendIn {
    /// As this query parameter.
    Query(String),
    /// At this path in the JSON body.
    Body(Vec<String>),
}

/// Compiles a trigger's pagination; returns it with the page size to offer templates.
pub(crate) fn pagination(p: &PaginationSpec) -> (Pagination, Option<u32>) {
    let (size, max) = p.page_sizes();
    let page_size = match p {
        PaginationSpec::None => None,
        _ => Some(size.or(max).unwrap_or(50)),
    };
    let compiled = match p {
        PaginationSpec::None => Pagination::None,
        PaginationSpec::Cursor {
            next,
            send_in,
            param,
            stop,
            restart_on_failure,
            token_repeats,
            ..
        } => Pagination::Cursor {
            next: split_path(next),
            send_in: match send_in {
                SendInSpec::Query => SendIn::Query(param.clone()),
                SendInSpec::Body => SendIn::Body(split_path(param)),
            },
            stop_on_empty: *stop == StopSpec::RecordsEmpty,
            restart_on_failure: *restart_on_failure,
            token_repeats: *token_repeats,
        },
        PaginationSpec::PageNumber {
            page_param,
            first_page,
            total_pages,
            ..
        } => Pagination::PageNumber {
            page_param: page_param.clone(),
            first_page: *first_page,
            total_pages: total_pages.as_deref().map(split_path),
        },
    };
    (compiled, page_size)
}

/// How a trigger's server compares dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// To the second.
    Second,
    /// By whole days in the account's timezone.
    Day,
}

/// What a trigger's cursor is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Path of the cursor value in a record.
    pub field: Vec<String>,
    /// How the server compares it.
    pub granularity: Granularity,
    /// Whether the server returns records in cursor order (else: a scan, sorted locally).
    pub sorted: bool,
}

/// Compiles a trigger's cursor.
pub(crate) fn cursor(c: &CursorSpec) -> Cursor {
    Cursor {
        field: split_path(&c.field),
        granularity: match c.granularity {
            GranularitySpec::Second => Granularity::Second,
            GranularitySpec::Day => Granularity::Day,
        },
        sorted: c.sort == SortSpec::Ascending,
    }
}

/// The connector-wide parts of talking to the API.
#[derive(Debug, Clone)]
pub struct Api {
    /// Human name.
    pub title: String,
    /// Region name → base URL.
    pub regions: IndexMap<String, String>,
    /// The region when a connection names none.
    pub default_region: String,
    /// Headers every request carries.
    pub headers: Vec<(String, String)>,
    /// The API version header and its default value.
    pub api_version: Option<(String, String)>,
    /// Rate-limit headers and window.
    pub rate_limit: Option<RateLimit>,
    /// Where error bodies keep their code and message.
    pub error_body: Option<ErrorBody>,
    /// Connector-wide error rules.
    pub errors: Vec<ErrorRule>,
    /// How to learn the account's timezone (and the server's clock): `GET path`, `field`.
    pub timezone: Option<(String, Vec<String>)>,
    /// Largest response body, in MiB, unless the connection says otherwise.
    pub max_response_mb: Option<u64>,
    /// The OAuth2 authorization-code grant, when the connector offers it.
    pub oauth2: Option<OAuth2Api>,
}

/// A connector's OAuth2 authorization-code grant.
#[derive(Debug, Clone)]
pub struct OAuth2Api {
    /// Authorize and token URLs of the default region.
    pub urls: (String, String),
    /// Authorize and token URLs of other regions.
    pub regions: IndexMap<String, (String, String)>,
    /// Scopes to ask for.
    pub scopes: Vec<String>,
    /// Whether the provider takes PKCE (`S256`).
    pub pkce: bool,
}

/// A connector's rate-limit headers and window.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// Header with the calls allowed per window.
    pub limit_header: Option<String>,
    /// Header with the calls left.
    pub remaining_header: String,
    /// Header with the window's end (Unix seconds).
    pub reset_header: String,
    /// The window's length.
    pub window: Duration,
    /// Calls per window before the API says.
    pub limit: Option<u32>,
}

/// Where an error body keeps its code and message.
#[derive(Debug, Clone)]
pub struct ErrorBody {
    /// Path of the list of errors (its first item is read).
    pub list: Vec<String>,
    /// Path of the code in an item.
    pub code: Vec<String>,
    /// Path of the message in an item.
    pub message: Vec<String>,
}

/// Compiles the connector's header (already checked).
pub(crate) fn api(h: &ConnectorHeaderSpec) -> Api {
    Api {
        title: h.title.clone(),
        regions: h.regions.clone(),
        default_region: h.default_region.clone(),
        headers: h
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        api_version: h
            .api_version
            .as_ref()
            .map(|v| (v.header.clone(), v.default.clone())),
        rate_limit: h.rate_limit.as_ref().map(|r| RateLimit {
            limit_header: r.limit_header.clone(),
            remaining_header: r.remaining_header.clone(),
            reset_header: r.reset_header.clone(),
            window: Duration::from_secs(
                r.window
                    .as_deref()
                    .and_then(|w| super::parse_duration(w).ok())
                    .unwrap_or(60)
                    .max(1) as u64,
            ),
            limit: r.limit,
        }),
        error_body: h.error_body.as_ref().map(|e| ErrorBody {
            list: split_path(&e.list),
            code: split_path(&e.code),
            message: split_path(&e.message),
        }),
        errors: error_rules(&h.errors),
        timezone: h
            .timezone
            .as_ref()
            .map(|t| (t.path.clone(), split_path(&t.field))),
        max_response_mb: h.max_response_mb,
        oauth2: h.auth.iter().find_map(|a| match a {
            crate::spec::AuthSpec::Oauth2AuthorizationCode {
                authorize_url,
                token_url,
                scopes,
                pkce,
                regions,
                ..
            } => Some(OAuth2Api {
                urls: (authorize_url.clone(), token_url.clone()),
                regions: regions
                    .iter()
                    .map(|(k, v)| (k.clone(), (v.authorize_url.clone(), v.token_url.clone())))
                    .collect(),
                scopes: scopes.clone(),
                pkce: *pkce,
            }),
            _ => None,
        }),
    }
}
