//! Aligned plain-text tables for people: columns padded to the widest cell,
//! two spaces apart, the last column never padded.

/// Column widths that fit every row (in characters).
pub fn widths(rows: &[Vec<String>]) -> Vec<usize> {
    let mut widths = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            if widths.len() <= i {
                widths.push(w);
            } else {
                widths[i] = widths[i].max(w);
            }
        }
    }
    widths
}

/// One row padded to `widths` (a cell wider than its column is kept whole).
pub fn line(row: &[String], widths: &[usize]) -> String {
    let mut out = String::new();
    for (i, cell) in row.iter().enumerate() {
        if i + 1 == row.len() {
            out.push_str(cell);
        } else {
            let w = widths.get(i).copied().unwrap_or(0);
            out.push_str(&format!("{cell:<w$}  "));
        }
    }
    out.trim_end().to_owned()
}

/// Every row, aligned, one per line.
pub fn render(rows: &[Vec<String>]) -> String {
    let widths = widths(rows);
    rows.iter().map(|r| line(r, &widths) + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_all_but_the_last_column() {
        let rows = vec![
            vec!["SEQ".into(), "TYPE".into(), "SUMMARY".into()],
            vec!["12".into(), "x".into(), "a b".into()],
        ];
        assert_eq!(render(&rows), "SEQ  TYPE  SUMMARY\n12   x     a b\n");
    }
}
