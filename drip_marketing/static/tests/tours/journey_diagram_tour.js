/** @odoo-module **/
import { registry } from "@web/core/registry";

// The journey form draws its step tree: a condition with yes/no branches, an A/B split
// with its weights, each step with its counts, and the goal.
registry.category("web_tour.tours").add("drip_journey_diagram", {
    steps: () => [
        {
            content: "Open the diagram tab",
            trigger: ".o_notebook_headers a:contains(Diagram)",
            run: "click",
        },
        {
            content: "The trigger heads the tree",
            trigger: ".o_drip_diagram_trigger:contains(Tag added)",
        },
        {
            content: "The condition is drawn",
            trigger: ".o_drip_diagram_node_condition:contains(Opted in to email?)",
        },
        {
            content: "Its 'yes' branch leads to the split",
            trigger: ".o_drip_diagram_item:has(.badge:contains(Condition met)) .o_drip_diagram_node_split",
        },
        {
            content: "Both A/B branches show their weight",
            trigger: ".o_drip_diagram_edge .badge:contains(A: thank-you · 50%)",
        },
        {
            trigger: ".o_drip_diagram_edge .badge:contains(B: we miss you · 50%)",
        },
        {
            content: "The 'no' branch is there too",
            trigger: ".o_drip_diagram_item:has(.badge:contains(Condition not met)) .o_drip_diagram_node_activity",
        },
        {
            content: "Live counts are shown on the sending steps",
            trigger: ".o_drip_diagram_node_send .o_drip_count_sent:contains(1 sent)",
        },
        {
            content: "The goal closes the tree",
            trigger: ".o_drip_diagram_goal:contains(Customer places an order)",
        },
    ],
});
