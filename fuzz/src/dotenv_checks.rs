//! One fuzz input through `dpms::config::parse_dotenv`: any text (bytes read as lossy UTF-8)
//! must give pairs or a located error, never a panic.

use dpms::config::{parse_dotenv, DotenvError};

/// Runs one input. Panics (so libFuzzer records a crash) when an invariant is broken.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match parse_dotenv(&text) {
        Ok(pairs) => {
            for (key, _) in &pairs {
                assert!(!key.is_empty(), "an empty key from {text:?}");
                assert!(
                    !key.contains(['=', '\n', '#']) && key.trim() == key,
                    "key {key:?} from {text:?}"
                );
            }
        }
        // The message is for a person to find the line: it must name the line where the bad
        // entry starts. So the text before that line parses, and up to it does not.
        Err(DotenvError::Line { line, text: bad }) => {
            assert!(
                line >= 1,
                "parse error at line {line} ({bad:?}) in {text:?}"
            );
            let lines: Vec<&str> = text.lines().collect();
            let at = lines.get(line - 1);
            assert!(
                at.is_some_and(|l| l.contains(bad.as_str())),
                "line {line} is {at:?}, not {bad:?}, in {text:?}"
            );
            // Prefixes of the text as written, line ends included.
            let ends: Vec<usize> = text
                .split_inclusive('\n')
                .scan(0, |end, l| {
                    *end += l.len();
                    Some(*end)
                })
                .collect();
            let before = &text[..if line == 1 { 0 } else { ends[line - 2] }];
            assert!(
                parse_dotenv(before).is_ok(),
                "error reported at line {line} ({bad:?}), not where the bad entry starts: the \
                 lines before it do not parse on their own, in {text:?}"
            );
            let through = &text[..ends[line - 1]];
            assert!(
                parse_dotenv(through).is_err(),
                "error reported at line {line} ({bad:?}), not where the bad entry starts: lines \
                 1..={line} parse, so it is further down, in {text:?}"
            );
        }
        Err(DotenvError::Other(detail)) => {
            assert!(!detail.is_empty(), "an empty error for {text:?}");
        }
    }
}
