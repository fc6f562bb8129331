"""The model registry: numbered versions and atomic alias moves (`store`), the gate's decision
(`gate`), and which champion a candidate is judged against (`champion`)."""
