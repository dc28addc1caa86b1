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
        !r.stdout.contains("error:"),
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
}
