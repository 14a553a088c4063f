"""The design methods behind `design.methods.base.Method`: cvae, backprop, active, ga, topopt, random."""
