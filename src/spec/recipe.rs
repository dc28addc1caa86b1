//! Serde shapes of a recipe file (`recipes/<id>.yaml`), also the source of `sluice schema`.
//! Data only: meaning is checked in `plan::recipe`.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A recipe: when a trigger fires, run these steps.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "sluice recipe")]
pub struct RecipeSpec {
    /// The recipe's name; must equal the file name without `.yaml` (snake_case).
    pub id: String,
    /// What the recipe does, for people.
    #[serde(default)]
    pub description: String,
    /// Connection name (from `sluice.yaml` or a connection file) used by the trigger (and by
    /// steps that name none). Give this or `connections`.
    #[serde(default)]
    pub connection: Option<String>,
    /// Run the recipe for several connections, each its own instance (`recipe@connection`)
    /// with its own state: a list of names (`[acme, globex]`) or every connection with a
    /// label (`{label: customer}`). Give this or `connection`.
    #[serde(default)]
    pub connections: Option<ConnectionsSpec>,
    /// What starts the recipe: `intercom.new_ticket`, or `{use: intercom.new_ticket, with: {…}}`
    /// to set trigger options.
    pub trigger: TriggerRefSpec,
    /// How often to poll the trigger.
    pub schedule: ScheduleSpec,
    /// `now` (default: nothing from before the first run fires) or a date/time to start from,
    /// such as `2026-11-01` or `2026-11-01T09:00:00Z` (backfill).
    #[serde(default)]
    pub start_from: Option<String>,
    /// A condition on the trigger record; records for which it is false are skipped.
    /// Example: `'{{eq record.role "user"}}'`.
    #[serde(default)]
    pub filter: Option<String>,
    /// How many records' chains may run at once (default 8; 1 runs them one after another).
    /// Steps of one record always run in order.
    #[serde(default)]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: Option<usize>,
    /// The actions to run for each record, in order.
    pub steps: Vec<StepSpec>,
}

/// Which trigger, and its options.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum TriggerRefSpec {
    /// `<connector>.<trigger>`.
    Name(String),
    /// With options.
    Full {
        /// `<connector>.<trigger>`.
        #[serde(rename = "use")]
        name: String,
        /// Trigger options.
        #[serde(default)]
        with: IndexMap<String, serde_json::Value>,
    },
}

impl TriggerRefSpec {
    /// `<connector>.<trigger>`.
    pub fn name(&self) -> &str {
        match self {
            TriggerRefSpec::Name(n) | TriggerRefSpec::Full { name: n, .. } => n,
        }
    }

    /// The options given (empty for the short form).
    pub fn options(&self) -> IndexMap<String, serde_json::Value> {
        match self {
            TriggerRefSpec::Name(_) => IndexMap::new(),
            TriggerRefSpec::Full { with, .. } => with.clone(),
        }
    }
}

// Hand-written so that both forms give precise errors (an untagged derive only says "did not
// match any variant").
impl<'de> Deserialize<'de> for TriggerRefSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TriggerRefSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`<connector>.<trigger>` or a map with `use` and `with`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TriggerRefSpec, E> {
                Ok(TriggerRefSpec::Name(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<TriggerRefSpec, A::Error> {
                let mut name = None;
                let mut with = IndexMap::new();
                while let Some(k) = m.next_key::<String>()? {
                    match k.as_str() {
                        "use" => name = Some(m.next_value::<String>()?),
                        "with" => with = m.next_value()?,
                        other => {
                            return Err(serde::de::Error::unknown_field(other, &["use", "with"]))
                        }
                    }
                }
                let name = name.ok_or_else(|| serde::de::Error::missing_field("use"))?;
                Ok(TriggerRefSpec::Full { name, with })
            }
        }
        d.deserialize_any(V)
    }
}

/// The connections a recipe runs for: names, or every connection carrying a label.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ConnectionsSpec {
    /// Connection names.
    Names(Vec<String>),
    /// Every connection with this label (`labels:` of a connection).
    Label {
        /// The label.
        label: String,
    },
}

// Hand-written for precise errors, as for `TriggerRefSpec`.
impl<'de> Deserialize<'de> for ConnectionsSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ConnectionsSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of connection names or `{label: <label>}`")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<ConnectionsSpec, A::Error> {
                let mut names = Vec::new();
                while let Some(n) = s.next_element::<String>()? {
                    names.push(n);
                }
                Ok(ConnectionsSpec::Names(names))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<ConnectionsSpec, A::Error> {
                let mut label = None;
                while let Some(k) = m.next_key::<String>()? {
                    match k.as_str() {
                        "label" => label = Some(m.next_value::<String>()?),
                        other => return Err(serde::de::Error::unknown_field(other, &["label"])),
                    }
                }
                let label = label.ok_or_else(|| serde::de::Error::missing_field("label"))?;
                Ok(ConnectionsSpec::Label { label })
            }
        }
        d.deserialize_any(V)
    }
}

/// How often: `every: 5m`, or `cron: "*/5 * * * *"` (five fields, or six with seconds first),
/// optionally in a `timezone`, optionally spread by a `jitter`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// A fixed interval: `30s`, `5m`, `1h`, `1d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// A cron expression: five fields (minute hour day month weekday) or six (seconds first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The IANA time zone `cron` is read in (default `UTC`), e.g. `Europe/Paris`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Start up to this much after each slot (`30s`, `2m`): a fixed offset per recipe
    /// instance, so that many recipes on one schedule do not all start in the same second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
}

/// What happens to a record when a step fails for good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnErrorSpec {
    /// End this record's chain; the record goes to the dead letters (default).
    #[default]
    Stop,
    /// Skip this step (its output is `null`) and go on with the next one.
    Skip,
    /// Keep the record and try the step again on the next run.
    Retry,
}

/// One step: an action with its inputs.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// The step's name (snake_case, unique in the recipe); later steps read its output as
    /// `steps.<id>`.
    pub id: String,
    /// `<connector>.<action>`, e.g. `intercom.assign_tags`.
    pub action: String,
    /// Connection for this step (default: the recipe instance's connection).
    #[serde(default)]
    pub connection: Option<String>,
    /// Inputs: each a value or a template such as `"{{record.email}}"`.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, serde_json::Value>")]
    pub with: IndexMap<String, serde_yaml::Value>,
    /// Run the step only when this condition is true.
    #[serde(default, rename = "if")]
    pub condition: Option<String>,
    /// A template giving a list: the step runs once per item, which inputs read as `item`.
    #[serde(default)]
    pub for_each: Option<String>,
    /// What to do when the step fails for good: `stop` (default), `skip` or `retry`.
    #[serde(default)]
    pub on_error: OnErrorSpec,
}
