//! Printing values as Go does: `fmt.Print` of a JSON-decoded `interface{}`
//! for scalars, `json.Marshal` for objects and arrays.

use serde_json::Value;

/// Appends `v` as `{{ v }}` prints it.
pub(crate) fn print(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Number(n) => out.push_str(&go_float(n.as_f64().unwrap_or(0.0), false)),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null => out.push_str("<no value>"),
        Value::Array(_) | Value::Object(_) => marshal(v, out),
    }
}

/// Go's `json.Marshal`: compact, object keys sorted, `<>&` escaped.
pub(crate) fn marshal(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&go_float(n.as_f64().unwrap_or(0.0), true)),
        Value::String(s) => quote(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                marshal(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                quote(k, out);
                out.push(':');
                marshal(&m[k.as_str()], out);
            }
            out.push('}');
        }
    }
}

fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}') => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float64 as Go prints it: `%v` (`strconv 'g'`, shortest, exponent below
/// -4 or from 6 up) or, with `json`, as `encoding/json` writes it (`'f'`
/// unless below 1e-6 or from 1e21 up, exponent without a leading zero).
pub(crate) fn go_float(f: f64, json: bool) -> String {
    // Shortest round-trip digits and the decimal exponent, from Rust's `{:e}`.
    let sci = format!("{:e}", f.abs());
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let sign = if f.is_sign_negative() && f != 0.0 {
        "-"
    } else {
        ""
    };
    let use_e = if json {
        f != 0.0 && (f.abs() < 1e-6 || f.abs() >= 1e21)
    } else {
        f != 0.0 && !(-4..6).contains(&exp)
    };
    if use_e {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let esign = if exp < 0 { '-' } else { '+' };
        let width = if json { 1 } else { 2 };
        format!("{sign}{first}{dot}{rest}e{esign}{:0width$}", exp.abs())
    } else {
        let dp = exp + 1;
        let nd = digits.len() as i32;
        let body = if dp <= 0 {
            format!("0.{}{digits}", "0".repeat((-dp) as usize))
        } else if dp >= nd {
            format!("{digits}{}", "0".repeat((dp - nd) as usize))
        } else {
            format!("{}.{}", &digits[..dp as usize], &digits[dp as usize..])
        };
        format!("{sign}{body}")
    }
}

#[cfg(test)]
mod tests {
    use super::go_float;

    #[test]
    fn floats_print_as_go() {
        for (f, v, j) in [
            (7200.0, "7200", "7200"),
            (0.0, "0", "0"),
            (1.5, "1.5", "1.5"),
            (-2.25, "-2.25", "-2.25"),
            (123456.0, "123456", "123456"),
            (1e6, "1e+06", "1000000"),
            (1234567.0, "1.234567e+06", "1234567"),
            (0.0001, "0.0001", "0.0001"),
            (0.00001, "1e-05", "0.00001"),
            (1e-7, "1e-07", "1e-7"),
            (1e21, "1e+21", "1e+21"),
            (1e100, "1e+100", "1e+100"),
        ] {
            assert_eq!(go_float(f, false), v, "%v of {f}");
            assert_eq!(go_float(f, true), j, "json of {f}");
        }
    }
}
