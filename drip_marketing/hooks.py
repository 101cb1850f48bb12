def uninstall_hook(env):
    """Empty the histories that keep module records alive before Odoo removes them.

    Odoo deletes a module's own records (event types, steps) one by one
    *before* it drops the tables. The event log and the delivery ledger reference event
    types and steps with ``ON DELETE RESTRICT`` so that no history is lost in normal use;
    both tables are dropped a moment later anyway. ``DELETE``, not ``TRUNCATE … CASCADE``,
    so that Odoo's own tables pointing at them (an order's attributed message) only lose
    the reference.
    """
    for table in ("drip_message", "drip_event"):
        env.cr.execute(f"DELETE FROM {table}")  # noqa: S608 -- fixed table names
    # Journeys a user made (no external id) may use the shipped templates, which their
    # steps reference with ON DELETE RESTRICT: they go first, with their steps.
    env.cr.execute(
        """
        DELETE FROM drip_journey
         WHERE id NOT IN (SELECT res_id FROM ir_model_data WHERE model = 'drip.journey')
        """
    )
