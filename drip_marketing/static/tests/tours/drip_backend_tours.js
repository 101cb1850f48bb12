/** @odoo-module **/
import { registry } from "@web/core/registry";
import { stepUtils } from "@web_tour/tour_service/tour_utils";

// The backend as its users see it (issue 9). Triggers use CSS classes and `name`
// attributes only, so the same steps run in any language; the labels each screen must
// show are passed in, and the Chinese run asserts them in Chinese.

const LABELS = {
    en_US: {
        journeys: "Journeys",
        templates: "Templates",
        preview: "Preview",
        steps: "Steps",
        testRun: "Test run",
        outcome: "Outcome",
        start: "Start",
        messageAnalysis: "Message analysis",
        goalOrder: "Customer places an order",
        reporting: "Reporting",
    },
    zh_CN: {
        journeys: "旅程",
        templates: "模板",
        preview: "预览",
        steps: "步骤",
        testRun: "试运行",
        outcome: "结果",
        start: "启动",
        messageAnalysis: "消息分析",
        goalOrder: "客户下单",
        reporting: "报表",
    },
};

function menu(xmlid) {
    return { trigger: `.o_main_navbar [data-menu-xmlid="drip_marketing.${xmlid}"]`, run: "click" };
}

function pickMany2one(fieldSelector, text, label) {
    return [
        { trigger: `${fieldSelector} input`, run: `edit ${text}` },
        {
            trigger: `.o-autocomplete--dropdown-item a:contains(${label || text})`,
            run: "click",
        },
    ];
}

function adminSteps(lang) {
    const L = LABELS[lang];
    const row = ".o_field_widget[name=step_ids] .o_selected_row";
    return [
        ...stepUtils.goToAppSteps("drip_marketing.drip_marketing_menu_root", "Open Drip Marketing"),
        // ---------------------------------------------------------------- template + preview
        {
            content: "The app menu is translated",
            trigger: `.o_main_navbar [data-menu-xmlid="drip_marketing.drip_template_menu"]:contains(${L.templates})`,
            run: "click",
        },
        { trigger: ".o_control_panel_main_buttons .o_list_button_add", run: "click" },
        { trigger: ".o_field_widget[name=name] input", run: "edit Tour cart reminder" },
        {
            trigger: ".o_field_widget[name=subject] input",
            run: "edit {{ partner.name }}, your cart is waiting",
        },
        {
            trigger: ".o_field_widget[name=body_text] textarea",
            run: "edit Hello {{ partner.name }}, come back to your cart.",
        },
        {
            content: "Open the preview tab",
            trigger: `.o_notebook_headers a[name=preview]:contains(${L.preview})`,
            run: "click",
        },
        ...pickMany2one(".o_field_widget[name=preview_partner_id]", "Ada Tourist"),
        {
            content: "The subject is rendered for the chosen customer",
            trigger: ".o_field_widget[name=preview_subject]:contains(Ada Tourist, your cart is waiting)",
        },
        ...stepUtils.saveForm(),
        // ---------------------------------------------------------------- journey
        {
            content: "Journeys menu",
            trigger: `.o_main_navbar [data-menu-xmlid="drip_marketing.drip_journey_menu"]:contains(${L.journeys})`,
            run: "click",
        },
        { trigger: ".o_control_panel_main_buttons .o-kanban-button-new", run: "click" },
        { trigger: ".o_field_widget[name=name] input", run: "edit Tour cart rescue" },
        { trigger: ".o_field_widget[name=trigger] select", run: 'select "cart_abandoned"' },
        {
            content: "Exit on order: a choice, no domain to type",
            trigger: `.o_field_widget[name=goal_type]:contains(${L.goalOrder}) input[data-value=order]`,
            run: "click",
        },
        { trigger: ".o_field_widget[name=goal_type] input[data-value=order]:checked" },
        {
            content: "Add the first step",
            trigger: `.o_notebook_headers a[name=steps]:contains(${L.steps})`,
            run: "click",
        },
        {
            trigger: ".o_field_widget[name=step_ids] .o_field_x2many_list_row_add a",
            run: "click",
        },
        { trigger: `${row} .o_field_widget[name=name] input`, run: "edit First reminder" },
        { trigger: `${row} .o_field_widget[name=step_type] select`, run: 'select "send"' },
        { trigger: `${row} .o_field_widget[name=delay_value] input`, run: "edit 1" },
        { trigger: `${row} .o_field_widget[name=delay_unit] select`, run: 'select "hours"' },
        ...pickMany2one(`${row} .o_field_widget[name=template_id]`, "Tour cart reminder"),
        ...stepUtils.saveForm(),
        {
            content: "Second step: 24 h after the first, if no order",
            trigger: ".o_field_widget[name=step_ids] .o_field_x2many_list_row_add a",
            run: "click",
        },
        { trigger: `${row} .o_field_widget[name=name] input`, run: "edit Second reminder" },
        { trigger: `${row} .o_field_widget[name=step_type] select`, run: 'select "send"' },
        ...pickMany2one(`${row} .o_field_widget[name=parent_id]`, "First reminder"),
        { trigger: `${row} .o_field_widget[name=step_trigger] select`, run: 'select "not_ordered"' },
        { trigger: `${row} .o_field_widget[name=delay_value] input`, run: "edit 24" },
        { trigger: `${row} .o_field_widget[name=delay_unit] select`, run: 'select "hours"' },
        ...pickMany2one(`${row} .o_field_widget[name=template_id]`, "Tour cart reminder"),
        ...stepUtils.saveForm(),
        {
            content: "Both steps are listed",
            trigger: ".o_field_widget[name=step_ids] .o_data_row:contains(Second reminder)",
        },
        // ---------------------------------------------------------------- test run
        {
            content: "Test run",
            trigger: `.o_form_statusbar button.o_drip_test_run_button:contains(${L.testRun})`,
            run: "click",
        },
        ...pickMany2one(".modal .o_field_widget[name=partner_id]", "Ada Tourist"),
        { trigger: ".modal button[name=action_run]", run: "click" },
        {
            content: "The outcome, step by step",
            trigger: `.modal .o_drip_test_run thead:contains(${L.outcome})`,
        },
        { trigger: ".modal .o_drip_test_run tbody tr:contains(First reminder)" },
        { trigger: ".modal .o_drip_test_run tbody tr:contains(Second reminder)" },
        { trigger: ".modal .modal-footer button.btn-secondary", run: "click" },
        { trigger: "body:not(:has(.modal))" },
        // ---------------------------------------------------------------- start
        {
            content: "Start the journey",
            trigger: `.o_form_statusbar button[name=action_start]:contains(${L.start})`,
            run: "click",
        },
        {
            trigger: ".o_field_widget[name=state] button[data-value=running].o_arrow_button_current",
        },
        // ---------------------------------------------------------------- messages, report
        {
            content: "Its messages (the stat button may sit under 'More')",
            trigger: ".o-form-buttonbox button[name=action_view_messages], .o-form-buttonbox .o_button_more",
            run: async function (helpers) {
                if (!document.querySelector(".o-form-buttonbox button[name=action_view_messages]")) {
                    await helpers.click(".o-form-buttonbox .o_button_more");
                }
            },
        },
        { trigger: "button[name=action_view_messages]", run: "click" },
        { trigger: ".o_list_view, .o_view_nocontent, .o_kanban_view" },
        menu("drip_marketing_menu_reporting"),
        {
            trigger: `.dropdown-menu [data-menu-xmlid="drip_marketing.drip_message_menu_report"]`,
            run: "click",
        },
        {
            content: "The message analysis opens as a pivot",
            trigger: `.o_breadcrumb:contains(${L.messageAnalysis})`,
        },
        { trigger: ".o_pivot_view .o_pivot" },
        { trigger: ".o_switch_view.o_graph", run: "click" },
        { trigger: ".o_graph_view .o_graph_renderer canvas" },
    ];
}

registry.category("web_tour.tours").add("drip_admin_tour", { steps: () => adminSteps("en_US") });
registry.category("web_tour.tours").add("drip_admin_tour_zh", { steps: () => adminSteps("zh_CN") });

// ------------------------------------------------------------------------ sales rep
registry.category("web_tour.tours").add("drip_sales_rep_tour", {
    steps: () => [
        {
            content: "The customer's marketing timeline",
            trigger: ".o_notebook_headers a[name=drip_timeline]",
            run: "click",
        },
        {
            content: "Newest first: the order, then the tag, the consent change, the message",
            trigger: ".o_field_widget[name=drip_timeline_ids] .o_data_row:nth-child(1):contains(S-TOUR-1)",
        },
        {
            trigger: ".o_field_widget[name=drip_timeline_ids] .o_data_row:nth-child(2):contains(Tour VIP)",
        },
        {
            trigger: ".o_field_widget[name=drip_timeline_ids] .o_data_row:nth-child(3) .badge:contains(Consent)",
        },
        {
            content: "A message with its state and reason",
            trigger: ".o_field_widget[name=drip_timeline_ids] .o_data_row:nth-child(4):contains(Rep tour reminder)",
        },
        { trigger: ".o_field_widget[name=drip_timeline_ids] .o_data_row:contains(No consent)" },
        // ---------------------------------------------------------------- pause
        ...stepUtils.goToAppSteps("drip_marketing.drip_marketing_menu_root", "Open Drip Marketing"),
        menu("drip_marketing_menu_customers"),
        {
            trigger: `.dropdown-menu [data-menu-xmlid="drip_marketing.drip_enrollment_menu"]`,
            run: "click",
        },
        { trigger: ".o_data_row:contains(Bea Rep-Customer) .o_data_cell", run: "click" },
        { trigger: ".o_form_statusbar button[name=action_pause]", run: "click" },
        { trigger: ".o_form_statusbar button[name=action_resume]" },
        // ---------------------------------------------------------------- refused
        menu("drip_journey_menu"),
        {
            content: "No New button on journeys",
            trigger: ".o_kanban_view .o_kanban_record:contains(Rep tour journey)",
        },
        { trigger: ".o_control_panel:not(:has(.o-kanban-button-new))" },
        { trigger: ".o_kanban_record:contains(Rep tour journey)", run: "click" },
        {
            content: "The journey form is read-only, without Start/Stop",
            trigger: ".o_form_view .o_form_readonly",
        },
        { trigger: ".o_form_statusbar:not(:has(button[name=action_stop]))" },
        { trigger: ".o_form_view:not(:has(.o_form_button_save))" },
        menu("drip_template_menu"),
        { trigger: ".o_list_view .o_data_row" },
        {
            content: "No New button on templates",
            trigger: ".o_control_panel:not(:has(.o_list_button_add))",
        },
    ],
});

// ------------------------------------------------------------------------ integrator
registry.category("web_tour.tours").add("drip_integrator_tour", {
    steps: () => [
        {
            content: "The Redis URL",
            trigger: ".o_field_widget[name=drip_redis_url] input",
            run: async function (helpers) {
                const url = document.body.dataset.dripRedisUrl
                    || (await (await fetch("/web/dataset/call_kw/ir.config_parameter/get_param", {
                        method: "POST",
                        headers: { "Content-Type": "application/json" },
                        body: JSON.stringify({
                            jsonrpc: "2.0", method: "call",
                            params: {
                                model: "ir.config_parameter", method: "get_param",
                                args: ["drip_marketing.tour_redis_url"], kwargs: {},
                            },
                        }),
                    })).json()).result;
                await helpers.edit(url);
            },
        },
        { trigger: "button.o_drip_test_redis", run: "click" },
        {
            content: "Workers and queue depths are shown",
            trigger: ".o_notification:contains(tour-worker)",
        },
        { trigger: ".o_notification:contains(drip_bulk: 1)" },
        { trigger: ".o_notification:contains(drip_transactional: 0)" },
        {
            content: "The OpenAPI description is linked",
            trigger: "a.o_drip_openapi_link[href='/drip/api/v1/openapi.json']",
        },
        // ---------------------------------------------------------------- API key
        { trigger: ".o_user_menu .dropdown-toggle", run: "click" },
        { trigger: ".dropdown-item[data-menu=settings]", run: "click" },
        { trigger: ".o_notebook_headers a[name=page_account_security]", run: "click" },
        { trigger: "button[name=api_key_wizard]", run: "click" },
        {
            content: "Confirm the password if asked, then describe the key",
            trigger: ".modal button[name=run_check], .modal button[name=make_key]",
            run: async function (helpers) {
                if (this.anchor.name === "run_check") {
                    await helpers.edit("admin", ".modal .o_field_widget[name=password] input");
                    await helpers.click(".modal button[name=run_check]");
                }
            },
        },
        {
            trigger: ".modal .o_field_widget[name=name] input",
            run: "edit Shop event feed",
        },
        { trigger: ".modal button[name=make_key]", run: "click" },
        { trigger: ".modal .o_field_widget[name=key]", run: "click" },
        {
            content: "The key is shown once; close it (the test checks it was stored)",
            trigger: ".modal .modal-footer button",
            run: "click",
        },
        { trigger: "body:not(:has(.modal .o_field_widget[name=key]))" },
    ],
});
