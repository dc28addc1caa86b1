//! The documentation's examples are real: every complete recipe in `recipes/README.md`
//! validates against the shipped connector and `sluice.yaml`.

use crate::util::{root, run, sluice};

#[test]
fn readme_recipe_examples_validate() {
    let text = std::fs::read_to_string(root().join("recipes/README.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for block in text.split("```yaml\n").skip(1) {
        // Examples inside list items are indented: take the block's own indentation off.
        let raw = block.split("```").next().unwrap();
        let indent = raw.len() - raw.trim_start_matches(' ').len();
        let body: String = raw
            .lines()
            .map(|l| format!("{}\n", l.get(indent..).unwrap_or(l.trim_start())))
            .collect();
        let Some(id) = body.lines().find_map(|l| l.strip_prefix("id: ")) else {
            continue;
        };
        let id = id.split_whitespace().next().unwrap();
        let file = dir.path().join(format!("{id}.yaml"));
        std::fs::write(&file, &body).unwrap();
        let mut c = sluice();
        c.arg("validate").arg(&file);
        let r = run(c);
        assert_eq!(
            r.code, 0,
            "README example `{id}` does not validate:\n{}",
            r.stderr
        );
        n += 1;
    }
    // The top-level complete example and the indented `emit` one, at least.
    assert!(n >= 2, "complete recipes found in recipes/README.md: {n}");
}
