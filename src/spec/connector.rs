//! Serde shapes of a connector definition (`connectors/<id>.yaml`). Data only: no behaviour.
//!
//! The format is specified for maintainers in `connectors/README.md`; every struct here denies
//! unknown fields so a typo is an error with a location, never a silently ignored key.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// The top of a connector file, without its triggers and actions (those are read one by one so
/// that a problem in one does not hide problems in the others).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorHeaderSpec {
    /// Connector id; equals the file stem (`intercom`).
    pub id: String,
    /// Human name.
    pub title: String,
    /// One paragraph for `connectors show`.
    #[serde(default)]
    pub description: String,
    /// Where the API is documented.
    #[serde(default)]
    pub docs_url: Option<String>,
    /// Region name → base URL.
    pub regions: IndexMap<String, String>,
    /// Region used when a connection names none.
    pub default_region: String,
    /// Accepted ways to authenticate; the first is the default.
    pub auth: Vec<AuthSpec>,
    /// Headers sent on every request (literal values).
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// The API version header, pinned here and overridable per connection.
    #[serde(default)]
    pub api_version: Option<ApiVersionSpec>,
    /// Names of the rate-limit headers the API sends.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// How error bodies look.
    #[serde(default)]
    pub error_body: Option<ErrorBodySpec>,
    /// Error rules for every request of this connector (checked after the action's own).
    #[serde(default)]
    pub errors: Vec<ErrorRuleSpec>,
    /// How to learn the account's timezone (needed by day-granular triggers).
    #[serde(default)]
    pub timezone: Option<TimezoneSpec>,
    /// Largest response body accepted, in MiB (default 64); a connection may override it.
    #[serde(default)]
    pub max_response_mb: Option<u64>,
}

/// Authentication kinds. Both end up as `Authorization: Bearer <token>` on the wire.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSpec {
    /// A static access token from the connection's `token`.
    Bearer {
        /// What the token is and where to get it.
        #[serde(default)]
        description: String,
    },
    /// OAuth2 authorization-code grant; the resulting access token is used as a bearer token.
    Oauth2AuthorizationCode {
        /// Browser URL where the user grants access.
        authorize_url: String,
        /// URL where the code is exchanged for a token.
        token_url: String,
        /// Scopes to request (empty when the API takes none).
        #[serde(default)]
        scopes: Vec<String>,
        /// Whether the provider supports PKCE (RFC 7636, `S256`): `sluice connect` then sends
        /// a code challenge with the authorization and the verifier with the exchange.
        #[serde(default)]
        pkce: bool,
        /// Authorize and token URLs of regions other than the default one (a region not
        /// listed uses `authorize_url` and `token_url`).
        #[serde(default)]
        regions: IndexMap<String, OAuth2UrlsSpec>,
        /// What the grant gives and how to register an app.
        #[serde(default)]
        description: String,
    },
}

/// The OAuth2 URLs of one region.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2UrlsSpec {
    /// Browser URL where the user grants access.
    pub authorize_url: String,
    /// URL where the code is exchanged for a token.
    pub token_url: String,
}

/// An API version header with its pinned default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiVersionSpec {
    /// Header name, e.g. `Intercom-Version`.
    pub header: String,
    /// Version sent unless the connection overrides it.
    pub default: String,
}

/// Rate-limit header names.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Requests allowed in the window.
    #[serde(default)]
    pub limit_header: Option<String>,
    /// Requests left in the window.
    pub remaining_header: String,
    /// Unix seconds when the window refills.
    pub reset_header: String,
    /// The length of the API's rate window (`10s` for Intercom).
    #[serde(default)]
    pub window: Option<String>,
    /// Calls allowed per window before the API has said (`limit_header`).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Where the code and message of an error body are.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBodySpec {
    /// Path to the list of errors (`errors`); its first item is used.
    pub list: String,
    /// Path to the code inside one error.
    pub code: String,
    /// Path to the message inside one error.
    pub message: String,
}

/// The failure classes the runtime branches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClassSpec {
    /// Transient: retry with backoff.
    Retryable,
    /// Wait for the rate-limit window to refill, then retry.
    RateLimited,
    /// Credentials are missing, wrong or revoked: a person must act.
    Auth,
    /// Permanent: retrying cannot help.
    Fatal,
    /// The object already exists (e.g. duplicate email).
    Conflict,
}

/// Maps a status (and optionally an error code) to a class.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRuleSpec {
    /// Statuses this rule matches.
    pub status: Vec<u16>,
    /// Error code (from the error body) this rule matches; any when absent.
    #[serde(default)]
    pub code: Option<String>,
    /// The class to assign.
    pub class: FailureClassSpec,
    /// How to fix it, shown to the user.
    #[serde(default)]
    pub help: Option<String>,
    /// For a `retryable` rule: keep retrying (with backoff) until this long (`90s`, `2m`) has
    /// passed since the first attempt, however many attempts that takes — for a state that
    /// clears by itself after a known time, such as another client's scroll expiring.
    #[serde(default)]
    pub retry_for: Option<String>,
}

/// How to learn the account's timezone from the API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimezoneSpec {
    /// The request to send (GET, no body).
    pub path: String,
    /// Path to the IANA timezone name in its response.
    pub field: String,
}

/// HTTP methods a definition may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MethodSpec {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE (may carry a JSON body)
    Delete,
}

/// One HTTP request, as templates.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// HTTP method.
    pub method: MethodSpec,
    /// Path with `{param}` placeholders naming inputs; always percent-encoded.
    pub path: String,
    /// Query parameters: name → template. Omitted when the template refers to an absent input.
    #[serde(default)]
    pub query: IndexMap<String, String>,
    /// JSON body as a YAML map whose leaves may be templates.
    #[serde(default)]
    pub body: Option<serde_yaml::Value>,
}

/// A polling trigger.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// Human name.
    pub title: String,
    /// What fires it, in user terms.
    pub description: String,
    /// How records are found.
    pub kind: TriggerKindSpec,
    /// The kind of record it watches (`contact`), matched against actions' `changes`.
    #[serde(default)]
    pub object: Option<String>,
    /// The request for the first page. Templates see `since`, `page_size`, `options`.
    pub request: RequestSpec,
    /// How to get the next page.
    pub pagination: PaginationSpec,
    /// Path to the array of records in a page.
    pub records: String,
    /// Path to a record's unique id.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// The cursor (high-water mark) field and how the server compares it.
    pub cursor: CursorSpec,
    /// How far behind the cursor each poll starts, e.g. `10m` (covers search lag).
    pub lookback: String,
    /// Template of the key that makes a record fire once (`{{id}}` or `{{id}}:{{updated_at}}`).
    pub dedupe_key: String,
    /// Options a recipe may set; templates see them as `options.<name>`.
    #[serde(default)]
    pub options: IndexMap<String, FieldSpec>,
    /// Notable fields of a record, for the reference and recipe checks.
    #[serde(default)]
    pub outputs: IndexMap<String, FieldSpec>,
    /// Error rules checked before the connector's.
    #[serde(default)]
    pub errors: Vec<ErrorRuleSpec>,
}

fn default_id_field() -> String {
    "id".into()
}

/// Server-side search or a full scan filtered locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKindSpec {
    /// The server filters by the cursor field (`since` is sent in the request).
    Search,
    /// Every record is listed and filtered by the runtime.
    Scan,
}

/// Cursor field and server comparison semantics.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CursorSpec {
    /// Path to the record's cursor value (Unix seconds).
    pub field: String,
    /// How finely the server compares it.
    #[serde(default)]
    pub granularity: GranularitySpec,
    /// Whether the server's `>` actually means `>=`.
    #[serde(default)]
    pub gt_inclusive: bool,
    /// The order the server returns records in.
    pub sort: SortSpec,
}

/// Server comparison granularity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GranularitySpec {
    /// Full seconds.
    #[default]
    Second,
    /// Whole calendar days in the account's timezone.
    Day,
}

/// Record order of a trigger's responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SortSpec {
    /// Oldest cursor first.
    Ascending,
    /// No order: the runtime sorts after reading every page.
    None,
}

/// Pagination styles.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "style", rename_all = "snake_case", deny_unknown_fields)]
pub enum PaginationSpec {
    /// One request, one page.
    None,
    /// An opaque token from each response is sent with the next request.
    Cursor {
        /// Path of the next token in a response.
        next: String,
        /// Where the token goes: `body` (a dotted path inside the JSON body) or `query`.
        send_in: SendInSpec,
        /// Body path or query parameter name for the token.
        param: String,
        /// When paging ends.
        #[serde(default)]
        stop: StopSpec,
        /// Records per page (templates see `page_size`).
        #[serde(default)]
        page_size: Option<u32>,
        /// Largest page size the API accepts.
        #[serde(default)]
        max_page_size: Option<u32>,
        /// A failure mid-way means starting over from the first page (scroll APIs).
        #[serde(default)]
        restart_on_failure: bool,
        /// The API sends the same token on every page (it names a scroll session, not a
        /// position), so a repeated token is not a loop; only `max_pages` bounds paging.
        #[serde(default)]
        token_repeats: bool,
        /// Most pages one poll may read (default 10,000); more is an error.
        #[serde(default)]
        max_pages: Option<u64>,
    },
    /// Page numbers in the query string.
    PageNumber {
        /// Query parameter for the page number.
        page_param: String,
        /// First page number.
        #[serde(default = "one")]
        first_page: u64,
        /// Path to the total number of pages in a response; paging stops after it. Without it,
        /// paging stops at an empty page.
        #[serde(default)]
        total_pages: Option<String>,
        /// Records per page (templates see `page_size`).
        #[serde(default)]
        page_size: Option<u32>,
        /// Largest page size the API accepts.
        #[serde(default)]
        max_page_size: Option<u32>,
        /// Most pages one poll may read (default 10,000); more is an error.
        #[serde(default)]
        max_pages: Option<u64>,
    },
}

impl PaginationSpec {
    /// `max_pages` of the styles that have it, when given.
    pub fn max_pages(&self) -> Option<u64> {
        match self {
            PaginationSpec::None => None,
            PaginationSpec::Cursor { max_pages, .. }
            | PaginationSpec::PageNumber { max_pages, .. } => *max_pages,
        }
    }

    /// `(page_size, max_page_size)` of the styles that have them.
    pub fn page_sizes(&self) -> (Option<u32>, Option<u32>) {
        match self {
            PaginationSpec::None => (None, None),
            PaginationSpec::Cursor {
                page_size,
                max_page_size,
                ..
            }
            | PaginationSpec::PageNumber {
                page_size,
                max_page_size,
                ..
            } => (*page_size, *max_page_size),
        }
    }
}

fn one() -> u64 {
    1
}

/// Where a cursor token is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SendInSpec {
    /// Inside the JSON body, at a dotted path.
    Body,
    /// As a query parameter.
    Query,
}

/// When cursor paging ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopSpec {
    /// When a response has no next token.
    #[default]
    NextMissing,
    /// When a page has no records (the token is always present, e.g. scroll APIs).
    RecordsEmpty,
}

/// An action.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    /// Human name.
    pub title: String,
    /// What it does, in user terms, including pitfalls.
    pub description: String,
    /// Typed inputs; templates see them as `input.<name>`.
    #[serde(default)]
    pub inputs: IndexMap<String, FieldSpec>,
    /// The request, when there is only one way to do it.
    #[serde(default)]
    pub request: Option<RequestSpec>,
    /// Alternative requests chosen by the inputs given (first match wins).
    #[serde(default)]
    pub variants: Vec<VariantSpec>,
    /// At least one of these inputs must be given (e.g. email, external_id or role).
    #[serde(default)]
    pub require_any: Vec<String>,
    /// Name of an array input: one request per item, templates see `item`; output is the list.
    #[serde(default)]
    pub for_each: Option<String>,
    /// Path of the output inside the response (empty: the whole body).
    #[serde(default)]
    pub output: String,
    /// Notable output fields, for the reference and recipe checks.
    #[serde(default)]
    pub outputs: IndexMap<String, FieldSpec>,
    /// Error rules checked before the connector's.
    #[serde(default)]
    pub errors: Vec<ErrorRuleSpec>,
    /// On a `conflict` failure (the object exists), fetch the existing object instead, so that
    /// repeating a create is harmless.
    #[serde(default)]
    pub on_conflict: Option<OnConflictSpec>,
    /// Whether a request whose answer was lost (the connection dropped, a timeout, a 5xx) may
    /// simply be sent again. Default: yes for GET, PUT and DELETE, no for POST and PATCH.
    /// Upserts, attaches and searches sent with POST declare `true`; a create that is an
    /// upsert only when a natural key is given declares `{when_any: [email, external_id]}`.
    #[serde(default)]
    pub retry_safe: Option<RetrySafeSpec>,
    /// Kinds of record the action changes, side effects included (a note bumps its contact's
    /// `updated_at`): `validate` warns when a recipe's action changes what its trigger
    /// watches.
    #[serde(default)]
    pub changes: Vec<String>,
    /// For a create that is not safe to repeat: how to look for the earlier attempt before
    /// sending again.
    #[serde(default)]
    pub find_earlier: Option<FindEarlierSpec>,
}

/// How to turn a `conflict` into the existing object: take its id from the error message and
/// run another action of the same connector with it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OnConflictSpec {
    /// The id follows this text in the error message (`id=` in "…exists with id=6762…").
    pub id_after: String,
    /// The action to run with the id (e.g. `find_contact`).
    pub then: String,
    /// The input of `then` that takes the id.
    pub input: String,
}

/// `retry_safe`: always, never, or only when one of some inputs is given.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RetrySafeSpec {
    /// `true` / `false`.
    Flag(bool),
    /// Safe when at least one of these inputs is given (a natural key makes the create an
    /// upsert, or answers 409).
    WhenAny {
        /// The inputs.
        when_any: Vec<String>,
    },
}

/// How to find the object an earlier attempt of a create may have made, when its answer was
/// lost: a request listing recent candidates, and the fields that must equal what was sent.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FindEarlierSpec {
    /// The listing request (path parameters and templates over `input`, like the action's).
    pub request: RequestSpec,
    /// Path to the list of candidates in the response.
    pub records: String,
    /// Candidate field path → template over `input`: every one must match. Text is compared
    /// without HTML tags, entities decoded, and with white space collapsed (APIs store text
    /// as HTML).
    #[serde(rename = "match")]
    pub matches: IndexMap<String, String>,
    /// Path to the candidate's creation time (Unix seconds): only candidates created at or
    /// after the first attempt (on the server's clock, less a minute) count.
    #[serde(default)]
    pub created_field: Option<String>,
}

/// One way to perform an action, chosen by its inputs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// When this variant applies.
    pub when: WhenSpec,
    /// Inputs that become required when this variant applies.
    #[serde(default)]
    pub requires: Vec<String>,
    /// The request.
    pub request: RequestSpec,
    /// Output path for this variant (overrides the action's).
    #[serde(default)]
    pub output: Option<String>,
}

/// A variant condition: `{present: <input>}` or `{input: <input>, equals: <value>}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WhenSpec {
    /// The variant applies when this input is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<String>,
    /// The variant applies when this input equals `equals`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// The value `input` must equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<serde_json::Value>,
}

/// The type of an input or output field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldTypeSpec {
    /// Text.
    String,
    /// Whole number.
    Integer,
    /// Any number.
    Number,
    /// true / false.
    Boolean,
    /// Unix seconds.
    Timestamp,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
    /// Any JSON value.
    Any,
}

/// A typed field: an action input, trigger option or documented output.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Its type.
    #[serde(rename = "type")]
    pub ty: FieldTypeSpec,
    /// Whether it must be given (inputs only).
    #[serde(default)]
    pub required: bool,
    /// What it means.
    #[serde(default)]
    pub description: String,
    /// An example value.
    #[serde(default)]
    pub example: Option<serde_json::Value>,
    /// The allowed values, when closed.
    #[serde(default, rename = "enum")]
    pub allowed: Option<Vec<serde_json::Value>>,
    /// Item type of an array.
    #[serde(default)]
    pub items: Option<FieldTypeSpec>,
}
