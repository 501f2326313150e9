//! MCMT: `multipart/vnd.msys.mcmt` messages carrying `message/vnd.msys.apn` push parts (momentum.md §1.8, §2).
