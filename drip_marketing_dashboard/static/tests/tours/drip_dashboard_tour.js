import { registry } from "@web/core/registry";

// Opens the Drip Marketing dashboard in the Dashboards app and waits for its figures:
// a broken spreadsheet shows an error instead (and logs it, which fails the tour).
registry.category("web_tour.tours").add("drip_marketing_dashboard_tour", {
    steps: () => [
        {
            content: "Open the Drip Marketing dashboard",
            trigger: ".o_spreadsheet_dashboard_search_panel li[data-name='Drip Marketing']",
            run: "click",
        },
        {
            content: "It is the active one",
            trigger: ".o_search_panel_category_value.active[data-name='Drip Marketing']",
        },
        {
            content: "Its period filter is offered",
            trigger: ".o_filter_value_container",
        },
        {
            content: "Its scorecards are drawn",
            trigger: ".o_renderer .o-scorecard",
        },
        {
            content: "No loading error",
            trigger: ".o_spreadsheet_dashboard_action:not(:has(.dashboard-loading-status))",
        },
    ],
});
