//! `sluice demo`, the README's main command: the shipped recipes run for several cycles against
//! the in-process simulator while it makes changes, and a report comes out.

use crate::util::{run, sluice};

#[test]
fn demo_runs_the_shipped_recipes_over_several_cycles() {
    let r = run({
        let mut c = sluice();
        c.arg("demo");
        c
    });
    r.assert_ok();
    assert!(
        r.stdout
            .contains("12 recipes against the Intercom simulator"),
        "{}",
        r.stdout
    );
    for cycle in 1..=6 {
        assert!(
            r.stdout.contains(&format!("cycle {cycle}: ")),
            "{}",
            r.stdout
        );
    }
    assert!(
        // The table's error column (`  error: …`).
        !r.stdout.contains("  error: "),
        "a recipe failed:\n{}",
        r.stdout
    );
    // The popular automations fired and their steps reached the simulator.
    let fired = |recipe: &str| -> u64 {
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with(recipe))
            .unwrap_or_else(|| panic!("no line for {recipe}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    for recipe in [
        "new_ticket_triage",
        "conversation_to_ticket",
        "new_contact_welcome",
        "company_upgrade",
    ] {
        assert!(fired(recipe) > 0, "{recipe} never fired:\n{}", r.stdout);
    }
    assert!(
        r.stdout.contains("POST /tickets/{id}/tags")
            && r.stdout.contains("POST /conversations/{id}/convert")
    );
    assert!(r.stdout.contains("requests in all"));

    // It teaches: what the numbers mean, one record's journey, one dead letter and its
    // replay, what to try next. The explanations are compared with a golden file, with
    // numbers and ids (which follow the clock) masked.
    let section = |from: &str, to: &str| -> String {
        let start = r
            .stdout
            .find(from)
            .unwrap_or_else(|| panic!("no {from:?} in\n{}", r.stdout));
        let rest = &r.stdout[start..];
        rest[..rest.find(to).unwrap_or(rest.len())].to_string()
    };
    let stable = [
        section("What the numbers mean", "Why some recipes"),
        section("Why `POST /contacts` answered 409", "One record's journey"),
        section("What to try next", "\u{0}"),
    ]
    .concat();
    crate::util::golden("demo_explanations", &mask(&stable));
    let journey = section("One record's journey", "One dead letter");
    for step in [
        "trigger new_ticket: the search that found it\n    POST /tickets/search {",
        "step triage_tag: intercom.create_tag\n    POST /tags {\"name\":\"needs-triage\"}\n    answered 200",
        "step tag_ticket: intercom.assign_tags\n    POST /tickets/",
        "step note_contact: intercom.add_note_to_contact\n    POST /contacts/",
        "afterwards the ticket carries the tags [needs-triage]",
    ] {
        assert!(journey.contains(step), "{step:?} in\n{journey}");
    }
    let dead = section("One dead letter and its replay", "What the simulator saw");
    for want in [
        "  step        upgrade\n",
        "-> 422\n",
        "(the fault is gone now): replayed: `",
        "` finished from step `upgrade`",
    ] {
        assert!(dead.contains(want), "{want:?} in\n{dead}");
    }
    assert!(r.stdout.contains("Why some recipes fired 0 times"));
}

/// Numbers and ids masked: `154` → `N`, `6762f0…` → `ID`.
fn mask(text: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.len() >= 16 && word.chars().all(|c| c.is_ascii_hexdigit()) {
            out.push_str("ID");
        } else if word.chars().any(|c| c.is_ascii_digit()) {
            out.push('N');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}
