//! The ESMTP listener (momentum.md §1.3, design §6).
