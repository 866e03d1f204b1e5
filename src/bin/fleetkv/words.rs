//! Separates drpcli's listing words (`sort KEY`, `limit N`, `offset N`,
//! `reverse`, and their `KEY=VALUE` spellings) from the filter words.

use fleetkv::ListOptions;

const OPERATORS: [&str; 11] = [
    "eq", "ne", "lt", "lte", "gt", "gte", "in", "nin", "re", "between", "except",
];

/// Splits `words` into the filter words (in order) and the listing options
/// they carry, applied on top of `opts`.
pub fn split(words: &[String], opts: &mut ListOptions) -> Result<Vec<String>, String> {
    let mut filter = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        // A word right after an operator is a value, never a listing word.
        let after_op = i > 0 && OPERATORS.contains(&words[i - 1].to_ascii_lowercase().as_str());
        if after_op {
            filter.push(w.clone());
            i += 1;
            continue;
        }
        if let Some((k, v)) = w.split_once('=') {
            if apply(opts, k, Some(v))? {
                i += 1;
                continue;
            }
        } else {
            match w.to_ascii_lowercase().as_str() {
                "reverse" => {
                    opts.reverse = true;
                    i += 1;
                    continue;
                }
                word @ ("sort" | "limit" | "offset") => {
                    let v = words
                        .get(i + 1)
                        .ok_or_else(|| format!("listing word {word:?} needs a value after it"))?;
                    apply(opts, word, Some(v))?;
                    i += 2;
                    continue;
                }
                _ => {}
            }
        }
        filter.push(w.clone());
        i += 1;
    }
    Ok(filter)
}

/// Applies listing option `key` = `value`; false when `key` is not one.
fn apply(opts: &mut ListOptions, key: &str, value: Option<&str>) -> Result<bool, String> {
    let v = value.unwrap_or("");
    match key.to_ascii_lowercase().as_str() {
        "sort" => opts.sort = Some(v.to_string()),
        "reverse" => opts.reverse = parse_bool(key, v)?,
        "aggregate" => opts.aggregate = parse_bool(key, v)?,
        "limit" => opts.limit = Some(parse_num(key, v)?),
        "offset" => opts.offset = parse_num(key, v)?,
        "slim" => opts.slim.extend(csv(v)),
        "params" => opts.params = Some(csv(v)),
        _ => return Ok(false),
    }
    Ok(true)
}

fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    fleetkv::wire::parse_bool_named(key, v).map_err(|e| format!("listing word {e}"))
}

fn parse_num(key: &str, v: &str) -> Result<usize, String> {
    v.parse().map_err(|_| {
        format!("listing word {key}: expected a non-negative whole number, found {v:?}")
    })
}

/// Splits a comma-separated list, dropping empty items.
pub fn csv(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(words: &[&str]) -> (Vec<String>, ListOptions) {
        let mut o = ListOptions::default();
        let w: Vec<String> = words.iter().map(|s| s.to_string()).collect();
        let f = split(&w, &mut o)
            .map_err(|e| panic!("{e}"))
            .unwrap_or_default();
        (f, o)
    }

    #[test]
    fn separates_listing_words() {
        let (f, o) = run(&[
            "Profiles", "Eq", "example", "sort", "Name", "limit", "2", "offset", "1", "reverse",
        ]);
        assert_eq!(f, ["Profiles", "Eq", "example"]);
        assert_eq!(o.sort.as_deref(), Some("Name"));
        assert_eq!((o.limit, o.offset, o.reverse), (Some(2), 1, true));
    }

    #[test]
    fn key_value_forms() {
        let (f, o) = run(&["sort=Name", "reverse=true", "Name=fred", "slim=Params,Meta"]);
        assert_eq!(f, ["Name=fred"]);
        assert_eq!(o.sort.as_deref(), Some("Name"));
        assert!(o.reverse);
        assert_eq!(o.slim, ["Params", "Meta"]);
    }

    #[test]
    fn values_after_operators_stay_filter_words() {
        let (f, o) = run(&["Name", "Eq", "reverse", "Workflow", "Ne", "limit"]);
        assert_eq!(f, ["Name", "Eq", "reverse", "Workflow", "Ne", "limit"]);
        assert!(!o.reverse);
        assert_eq!(o.limit, None);
    }

    #[test]
    fn bad_listing_values_are_errors() {
        let mut o = ListOptions::default();
        assert!(split(&["limit".into()], &mut o).is_err());
        assert!(split(&["limit".into(), "x".into()], &mut o).is_err());
        assert!(split(&["reverse=maybe".into()], &mut o).is_err());
    }

    #[test]
    fn go_booleans() {
        let (_, o) = run(&["reverse=True", "aggregate=1"]);
        assert!(o.reverse && o.aggregate);
        let (_, o) = run(&["reverse=F"]);
        assert!(!o.reverse);
        let mut o = ListOptions::default();
        let e = split(&["aggregate=yes".into()], &mut o).unwrap_err();
        assert!(e.contains("aggregate") && e.contains("True"), "{e}");
    }

    #[test]
    fn whole_expression_passes_through() {
        let (f, _) = run(&["Name Eq a Or Name Eq b", "limit", "1"]);
        assert_eq!(f, ["Name Eq a Or Name Eq b"]);
    }
}
