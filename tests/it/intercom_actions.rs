//! Each of the 23 Intercom actions through `sluice call` against the simulator, asserting the
//! simulator's state afterwards and the requests it recorded.

use serde_json::{json, Value};
use sluice::sim::Kind;

use crate::util::SimEnv;

fn id(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

fn first(env: &SimEnv, kind: Kind) -> Value {
    env.sim()
        .records(kind)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no seeded {kind:?}"))
}

fn tag_ids(v: &Value) -> Vec<String> {
    // Contacts: tags.data[].id; tickets and conversations: tags.tags[].id.
    let list = v["tags"]["data"]
        .as_array()
        .or_else(|| v["tags"]["tags"].as_array())
        .cloned()
        .unwrap_or_default();
    let mut ids: Vec<String> = list.iter().map(id).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn companies_create_update_find_attach_delete() {
    let env = SimEnv::start(SimEnv::config(5, 2, 0, 0)).await;
    // create_or_update_company: creates, then updates the same company (upsert on company_id).
    let c = env.ok("create_or_update_company", json!({"company_id": "acme-001", "name": "Acme", "plan": "Pro", "size": 40, "monthly_spend": 250})).await;
    let cid = id(&c);
    let rec = env.sim().record(Kind::Company, &cid).unwrap();
    assert_eq!(
        (
            rec["name"].as_str(),
            rec["company_id"].as_str(),
            rec["size"].as_i64()
        ),
        (Some("Acme"), Some("acme-001"), Some(40))
    );
    env.sim().advance_clock(5);
    let again = env
        .ok(
            "create_or_update_company",
            json!({"company_id": "acme-001", "name": "Acme Ltd"}),
        )
        .await;
    assert_eq!(id(&again), cid, "same company_id must update, not create");
    let rec = env.sim().record(Kind::Company, &cid).unwrap();
    assert_eq!(rec["name"], "Acme Ltd");
    assert_eq!(rec["updated_at"].as_i64(), Some(crate::util::T0 + 5));
    // Only the given fields were sent.
    let sent = env.audit().last().unwrap().body.clone().unwrap();
    assert_eq!(sent, json!({"company_id": "acme-001", "name": "Acme Ltd"}));

    // update_company
    env.ok(
        "update_company",
        json!({"id": cid, "industry": "Manufacturing", "monthly_spend": 300}),
    )
    .await;
    let rec = env.sim().record(Kind::Company, &cid).unwrap();
    assert_eq!(
        (rec["industry"].as_str(), rec["monthly_spend"].as_i64()),
        (Some("Manufacturing"), Some(300))
    );

    // find_company by each key.
    for with in [
        json!({"id": cid}),
        json!({"company_id": "acme-001"}),
        json!({"name": "Acme Ltd"}),
    ] {
        let found = env.ok("find_company", with.clone()).await;
        assert_eq!(id(&found), cid, "find_company {with}");
    }
    let last = env.audit().last().unwrap().clone();
    assert_eq!(
        (
            last.method.as_str(),
            last.path.as_str(),
            last.query.as_deref()
        ),
        ("GET", "/companies", Some("name=Acme+Ltd"))
    );

    // add_contact_to_company
    let contact = id(&first(&env, Kind::Contact));
    let before = env.sim().record(Kind::Company, &cid).unwrap()["user_count"]
        .as_i64()
        .unwrap_or(0);
    let out = env
        .ok(
            "add_contact_to_company",
            json!({"contact_id": contact, "company_id": cid}),
        )
        .await;
    assert_eq!(id(&out), cid);
    assert_eq!(
        env.sim().record(Kind::Company, &cid).unwrap()["user_count"].as_i64(),
        Some(before + 1)
    );
    let c = env.sim().record(Kind::Contact, &contact).unwrap();
    assert!(
        c["companies"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == cid.as_str()),
        "{c}"
    );

    // delete_company
    let out = env.ok("delete_company", json!({"id": cid})).await;
    assert_eq!(out["deleted"], true);
    let r = env.call("find_company", json!({"id": cid})).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("company_not_found"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_create_update_find_note() {
    let env = SimEnv::start(SimEnv::config(3, 0, 0, 0)).await;
    let c = env.ok("create_contact", json!({"email": "ada@example.com", "name": "Ada", "role": "user", "external_id": "usr_ada", "signed_up_at": 1_700_000_000, "unsubscribed_from_emails": false})).await;
    let cid = id(&c);
    let rec = env.sim().record(Kind::Contact, &cid).unwrap();
    assert_eq!(
        (
            rec["email"].as_str(),
            rec["name"].as_str(),
            rec["external_id"].as_str()
        ),
        (Some("ada@example.com"), Some("Ada"), Some("usr_ada"))
    );
    assert_eq!(rec["signed_up_at"].as_i64(), Some(1_700_000_000));

    // None of email, external_id, role: refused before sending.
    let n = env.sim().audit().len();
    let r = env.call("create_contact", json!({"name": "Nobody"})).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("give at least one of `email`, `external_id`, `role`"),
        "{}",
        r.stderr
    );
    assert_eq!(env.sim().audit().len(), n, "nothing may be sent");

    env.sim().advance_clock(3);
    env.ok(
        "update_contact",
        json!({"id": cid, "name": "Ada Lovelace", "custom_attributes": null}),
    )
    .await;
    let rec = env.sim().record(Kind::Contact, &cid).unwrap();
    assert_eq!(rec["name"], "Ada Lovelace");
    assert_eq!(rec["updated_at"].as_i64(), Some(crate::util::T0 + 3));
    assert_eq!(
        env.audit().last().unwrap().body,
        Some(json!({"name": "Ada Lovelace", "custom_attributes": null}))
    );

    for with in [
        json!({"id": cid}),
        json!({"external_id": "usr_ada"}),
        json!({"email": "ada@example.com"}),
    ] {
        assert_eq!(
            id(&env.ok("find_contact", with.clone()).await),
            cid,
            "find_contact {with}"
        );
    }
    // By email goes through search with the address in the JSON body.
    let last = env.audit().last().unwrap().clone();
    assert_eq!(last.path, "/contacts/search");
    assert_eq!(
        last.body.unwrap()["query"],
        json!({"field": "email", "operator": "=", "value": "ada@example.com"})
    );
    let r = env
        .call("find_contact", json!({"email": "nobody@example.com"}))
        .await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("nothing was found"), "{}", r.stderr);

    let admin = id(&first(&env, Kind::Admin));
    let note = env.ok("add_note_to_contact", json!({"contact_id": cid, "body": "Called about the renewal & pricing", "admin_id": admin})).await;
    // Plain text is stored as HTML; sluice sends the text untouched (no template escaping).
    assert_eq!(
        note["body"],
        "<p>Called about the renewal &amp; pricing</p>"
    );
    assert_eq!(
        env.audit().last().unwrap().body.clone().unwrap()["body"],
        "Called about the renewal & pricing"
    );
    let notes = env.sim().records(Kind::Note);
    assert!(
        notes
            .iter()
            .any(|n| n["id"] == note["id"] && n["contact"]["id"] == cid.as_str()),
        "{notes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_create_update_find_delete_convert() {
    let env = SimEnv::start(SimEnv::config(3, 0, 1, 2)).await;
    let ticket_type = env
        .sim()
        .records(Kind::TicketType)
        .into_iter()
        .find(|t| t["category"] == "Customer")
        .expect("a Customer ticket type");
    let tt = id(&ticket_type);
    let contact = first(&env, Kind::Contact);
    let t = env
        .ok("create_ticket", json!({"ticket_type_id": tt, "contact_id": id(&contact), "ticket_attributes": {"_default_title_": "Checkout broken", "_default_description_": "500 on pay"}}))
        .await;
    let tid = id(&t);
    let rec = env.sim().record(Kind::Ticket, &tid).unwrap();
    assert_eq!(
        rec["ticket_attributes"]["_default_title_"],
        "Checkout broken"
    );
    assert_eq!(rec["contacts"]["contacts"][0]["id"], contact["id"]);
    // Exactly one contact reference, with only the given key.
    assert_eq!(
        env.audit().last().unwrap().body.clone().unwrap()["contacts"],
        json!([{"id": contact["id"]}])
    );

    // By email: the simulator creates the contact when absent.
    let t2 = env
        .ok(
            "create_ticket",
            json!({"ticket_type_id": tt, "contact_email": "new@example.com"}),
        )
        .await;
    assert!(env
        .sim()
        .records(Kind::Contact)
        .iter()
        .any(|c| c["email"] == "new@example.com"));

    env.sim().advance_clock(7);
    env.ok("update_ticket", json!({"id": tid, "open": false, "ticket_attributes": {"_default_title_": "Checkout fixed"}})).await;
    let rec = env.sim().record(Kind::Ticket, &tid).unwrap();
    assert_eq!(rec["open"], false);
    assert_eq!(
        rec["ticket_attributes"]["_default_title_"],
        "Checkout fixed"
    );
    assert_eq!(rec["updated_at"].as_i64(), Some(crate::util::T0 + 7));

    assert_eq!(id(&env.ok("find_ticket", json!({"id": tid})).await), tid);

    let out = env.ok("delete_ticket", json!({"id": id(&t2)})).await;
    assert_eq!(out["deleted"], true);
    assert!(env.sim().record(Kind::Ticket, &id(&t2)).is_none());
    let r = env.call("find_ticket", json!({"id": id(&t2)})).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("ticket_not_found"), "{}", r.stderr);

    // convert_conversation_to_ticket keeps the conversation's created_at.
    let conv = first(&env, Kind::Conversation);
    let t3 = env.ok("convert_conversation_to_ticket", json!({"conversation_id": id(&conv), "ticket_type_id": tt, "attributes": {"_default_title_": "From chat"}})).await;
    let rec = env.sim().record(Kind::Ticket, &id(&t3)).unwrap();
    assert_eq!(rec["created_at"], conv["created_at"]);
    // A non-Customer type is refused by Intercom.
    if let Some(bo) = env
        .sim()
        .records(Kind::TicketType)
        .into_iter()
        .find(|t| t["category"] != "Customer")
    {
        let conv2 = env.sim().records(Kind::Conversation)[1].clone();
        let r = env
            .call(
                "convert_conversation_to_ticket",
                json!({"conversation_id": id(&conv2), "ticket_type_id": id(&bo)}),
            )
            .await;
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("parameter_invalid"), "{}", r.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_create_update_find_delete() {
    let env = SimEnv::start(SimEnv::config(2, 0, 0, 0)).await;
    let contact = first(&env, Kind::Contact);
    let msg = env.ok("create_conversation", json!({"contact_id": id(&contact), "contact_type": "user", "body": "I need help with my invoice"})).await;
    assert_eq!(msg["type"], "user_message");
    let conv = msg["conversation_id"]
        .as_str()
        .expect("conversation_id")
        .to_string();
    assert!(env.sim().record(Kind::Conversation, &conv).is_some());
    assert_eq!(
        env.audit().last().unwrap().body,
        Some(
            json!({"from": {"type": "user", "id": contact["id"]}, "body": "I need help with my invoice"})
        )
    );

    env.ok(
        "update_conversation",
        json!({"id": conv, "title": "Invoice question", "read": true}),
    )
    .await;
    let rec = env.sim().record(Kind::Conversation, &conv).unwrap();
    assert_eq!(
        (rec["title"].as_str(), rec["read"].as_bool()),
        (Some("Invoice question"), Some(true))
    );

    let found = env.ok("find_conversation", json!({"id": conv})).await;
    assert_eq!(id(&found), conv);
    assert!(
        found["conversation_parts"].is_object(),
        "single-object responses carry parts"
    );

    assert_eq!(
        env.ok("delete_conversation", json!({"id": conv})).await["deleted"],
        true
    );
    assert!(env.sim().record(Kind::Conversation, &conv).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_create_assign_remove_delete_on_every_target() {
    let env = SimEnv::start(SimEnv::config(2, 0, 1, 1)).await;
    let vip = id(&env.ok("create_tag", json!({"name": "VIP"})).await);
    // Names ignore case: the same tag comes back.
    assert_eq!(id(&env.ok("create_tag", json!({"name": "vip"})).await), vip);
    let churn = id(&env.ok("create_tag", json!({"name": "Churn risk"})).await);
    let admin = id(&first(&env, Kind::Admin));

    // Contact: one request per tag.
    let contact = id(&first(&env, Kind::Contact));
    env.sim().clear_audit();
    let out = env
        .ok(
            "assign_tags",
            json!({"target": "contact", "target_id": contact, "tag_ids": [vip, churn]}),
        )
        .await;
    assert_eq!(out.as_array().unwrap().len(), 2);
    let calls: Vec<(String, Option<Value>)> = env
        .audit()
        .into_iter()
        .map(|e| (format!("{} {}", e.method, e.path), e.body))
        .collect();
    assert_eq!(
        calls,
        vec![
            (
                format!("POST /contacts/{contact}/tags"),
                Some(json!({"id": vip}))
            ),
            (
                format!("POST /contacts/{contact}/tags"),
                Some(json!({"id": churn}))
            ),
        ]
    );
    let mut both = vec![vip.clone(), churn.clone()];
    both.sort();
    assert_eq!(
        tag_ids(&env.sim().record(Kind::Contact, &contact).unwrap()),
        both
    );

    // Conversation and ticket need admin_id: refused without it, before sending.
    let conv = id(&first(&env, Kind::Conversation));
    let r = env
        .call(
            "assign_tags",
            json!({"target": "conversation", "target_id": conv, "tag_ids": [vip]}),
        )
        .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("`admin_id` is required when `target` is \"conversation\""),
        "{}",
        r.stderr
    );
    env.ok(
        "assign_tags",
        json!({"target": "conversation", "target_id": conv, "tag_ids": [vip], "admin_id": admin}),
    )
    .await;
    assert_eq!(
        tag_ids(&env.sim().record(Kind::Conversation, &conv).unwrap()),
        vec![vip.clone()]
    );
    let ticket = id(&first(&env, Kind::Ticket));
    env.ok("assign_tags", json!({"target": "ticket", "target_id": ticket, "tag_ids": [vip, churn], "admin_id": admin})).await;
    assert_eq!(
        tag_ids(&env.sim().record(Kind::Ticket, &ticket).unwrap()),
        both
    );

    // remove_tags: contact without a body; ticket and conversation with a JSON body on DELETE.
    env.sim().clear_audit();
    env.ok(
        "remove_tags",
        json!({"target": "contact", "target_id": contact, "tag_ids": [churn]}),
    )
    .await;
    env.ok(
        "remove_tags",
        json!({"target": "ticket", "target_id": ticket, "tag_ids": [vip], "admin_id": admin}),
    )
    .await;
    env.ok(
        "remove_tags",
        json!({"target": "conversation", "target_id": conv, "tag_ids": [vip], "admin_id": admin}),
    )
    .await;
    let calls: Vec<(String, Option<Value>)> = env
        .audit()
        .into_iter()
        .map(|e| (format!("{} {}", e.method, e.path), e.body))
        .collect();
    assert_eq!(
        calls,
        vec![
            (format!("DELETE /contacts/{contact}/tags/{churn}"), None),
            (
                format!("DELETE /tickets/{ticket}/tags/{vip}"),
                Some(json!({"admin_id": admin}))
            ),
            (
                format!("DELETE /conversations/{conv}/tags/{vip}"),
                Some(json!({"admin_id": admin}))
            ),
        ]
    );
    assert_eq!(
        tag_ids(&env.sim().record(Kind::Contact, &contact).unwrap()),
        vec![vip.clone()]
    );
    assert_eq!(
        tag_ids(&env.sim().record(Kind::Ticket, &ticket).unwrap()),
        vec![churn.clone()]
    );
    assert!(tag_ids(&env.sim().record(Kind::Conversation, &conv).unwrap()).is_empty());

    // delete_tag
    env.ok("delete_tag", json!({"id": churn})).await;
    assert!(env.sim().record(Kind::Tag, &churn).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_accepted_and_recorded() {
    let env = SimEnv::start(SimEnv::config(2, 0, 0, 0)).await;
    let contact = first(&env, Kind::Contact);
    let out = env.ok("create_event", json!({"event_name": "placed-order", "created_at": crate::util::T0, "contact_id": id(&contact), "metadata": {"order_id": "A-1", "amount": 42}})).await;
    assert_eq!(out, Value::Null, "202 with an empty body has no output");
    let last = env.audit().last().unwrap().clone();
    assert_eq!(last.status, 202);
    assert_eq!(last.body.unwrap()["id"], contact["id"]);
    let events = env.sim().records(Kind::Event);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event_name"], "placed-order");
    // A repeat is accepted and ignored by Intercom.
    env.ok("create_event", json!({"event_name": "placed-order", "created_at": crate::util::T0, "contact_id": id(&contact)})).await;
    assert_eq!(env.sim().records(Kind::Event).len(), 1);
    // No contact identifier: refused before sending.
    let r = env
        .call("create_event", json!({"event_name": "x", "created_at": 1}))
        .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("give at least one of `user_id`, `contact_id`, `email`"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_tag_tags_and_untags_companies() {
    let env = SimEnv::start(SimEnv::config(5, 3, 0, 0)).await;
    let companies = env.sim().records(Kind::Company);
    let (a, b) = (&companies[0], &companies[1]);
    let vip = env
        .ok(
            "create_tag",
            json!({"name": "VIP", "companies": [{"id": id(a)}, {"company_id": b["company_id"]}]}),
        )
        .await;
    assert_eq!(vip["name"], "VIP");
    let tagged = |c: &Value| tag_ids(&env.sim().record(Kind::Company, &id(c)).unwrap());
    assert_eq!(tagged(a), [id(&vip)]);
    assert_eq!(tagged(b), [id(&vip)]);
    // The same call untags the items that say so; the tag is not created twice.
    let again = env
        .ok(
            "create_tag",
            json!({"name": "vip", "companies": [{"id": id(a), "untag": true}]}),
        )
        .await;
    assert_eq!(id(&again), id(&vip));
    assert!(tagged(a).is_empty());
    assert_eq!(tagged(b), [id(&vip)]);
    let req = env.audit().last().unwrap().clone();
    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/tags"));
    // An unknown company is Intercom's 404, and fails the call.
    let r = env
        .call(
            "create_tag",
            json!({"name": "VIP", "companies": [{"id": "000000000000000000000000"}]}),
        )
        .await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("404"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_conversation_can_answer_in_plain_text() {
    let env = SimEnv::start(SimEnv::config(3, 0, 0, 2)).await;
    let conv = first(&env, Kind::Conversation);
    let html = env.ok("find_conversation", json!({"id": id(&conv)})).await;
    let body = html["source"]["body"].as_str().unwrap().to_string();
    assert!(body.starts_with("<p>"), "{body}");
    let plain = env
        .ok(
            "find_conversation",
            json!({"id": id(&conv), "display_as": "plaintext"}),
        )
        .await;
    let text = plain["source"]["body"].as_str().unwrap();
    assert!(!text.contains('<') && !text.is_empty(), "{text}");
    assert_eq!(format!("<p>{text}</p>"), body.replace("&amp;", "&"));
    let r = env
        .call(
            "find_conversation",
            json!({"id": id(&conv), "display_as": "html"}),
        )
        .await;
    assert_eq!(r.code, 1, "refused before sending: {}", r.stderr);
}
